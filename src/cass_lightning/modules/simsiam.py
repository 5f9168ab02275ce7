"""SimSiamModule: Simple Siamese learning on one CASS encoder, from lightly's parts.

SimSiam is BYOL without the momentum target: both views go through the same encoder, and
stopping the gradient on the projection side is all that keeps it from collapsing (Chen & He,
2021), which makes it the plainest test of the collapse alarm. lightly's
``SimSiamProjectionHead`` and ``SimSiamPredictionHead`` (SimSiam's widths: 2048, bottleneck 512)
and ``NegativeCosineSimilarity``, symmetrised over the two views. Encoders, optimiser and
schedule are CASS's (:mod:`.base`), so a CASS-vs-SimSiam row changes only the method.

Usable on its own::

    from cass_lightning.modules.simsiam import SimSiamModule
    model = SimSiamModule(arm="cnn", cnn="resnet18", img_size=64)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: ([view_1, view_2], labels)
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from cass_lightning.modules.one_arm import OneArmMethod


class SimSiamModule(OneArmMethod):
    """SimSiam on one backbone (``arm``); ``head``: the projection and prediction widths; the
    rest as :class:`~.one_arm.OneArmMethod`."""

    method = "simsiam"
    method_name = "SimSiam"
    default_head: ClassVar[dict[str, Any]] = {
        "hidden_dim": 2048,
        "dim": 2048,
        "predictor_hidden_dim": 512,
    }

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        h, width = self.head_cfg, self.backbone.num_features
        self.projection_head = SimSiamProjectionHead(width, h["hidden_dim"], h["dim"])
        self.criterion = NegativeCosineSimilarity()
        self.prediction_head = SimSiamPredictionHead(h["dim"], h["predictor_hidden_dim"], h["dim"])

    def data_views(self) -> str:
        return "pair"

    def forward(self, images: Tensor) -> Tensor:
        """The projection ``z`` of ``images`` (the collapse alarm watches it, as SimSiam's
        authors did)."""
        return self.projection_head(self.backbone(images))

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z0, z1 = self(views[0]), self(views[1])
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        # The stop-gradient on z: without it SimSiam collapses at once.
        loss = 0.5 * (self.criterion(p0, z1.detach()) + self.criterion(p1, z0.detach()))
        return loss, {self.hparams.arm: z0}
