"""SimCLRModule: contrastive learning on one CASS encoder, from lightly's parts.

SimCLR (Chen et al., 2020) pulls the two views of each image together and pushes every other
image of the batch away: lightly's ``SimCLRProjectionHead`` and ``NTXentLoss`` (gathered over
processes under DDP, so the negatives are the whole global batch). The negatives are what keep
it from collapsing, unlike CASS, BYOL and SimSiam. Encoders, optimiser and schedule are CASS's
(:mod:`.base`), so a CASS-vs-SimCLR row changes only the method.

Usable on its own::

    from cass_lightning.modules.simclr import SimCLRModule
    model = SimCLRModule(arm="cnn", cnn="resnet18", img_size=64)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: ([view_1, view_2], labels)
"""

from __future__ import annotations

from typing import Any, ClassVar

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from cass_lightning.checks import check_positive
from cass_lightning.modules.one_arm import OneArmMethod


class SimCLRModule(OneArmMethod):
    """SimCLR on one backbone (``arm``); ``head``: the projection's widths and the loss's
    ``temperature`` (lightly's default 0.5; SimCLR used 0.1 to 0.5 by batch size); the rest as
    :class:`~.one_arm.OneArmMethod`."""

    method = "simclr"
    method_name = "SimCLR"
    default_head: ClassVar[dict[str, Any]] = {"hidden_dim": 2048, "dim": 128, "temperature": 0.5}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        h = self.head_cfg
        temperature = check_positive("model.head.temperature", h["temperature"])
        self.projection_head = SimCLRProjectionHead(
            self.backbone.num_features, h["hidden_dim"], h["dim"]
        )
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def data_views(self) -> str:
        return "pair"

    def forward(self, images: Tensor) -> Tensor:
        """The projection of ``images`` (what the loss compares and the collapse alarm reads)."""
        return self.projection_head(self.backbone(images))

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z0, z1 = self(views[0]), self(views[1])
        return self.criterion(z0, z1), {self.hparams.arm: z0}
