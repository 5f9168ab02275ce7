"""BYOLModule: Bootstrap Your Own Latent on one CASS encoder, from lightly's parts.

Asks whether CASS's gain comes from pairing two architectures or from the cosine objective
alone: BYOL trains ONE encoder (``arm``) against a momentum copy of itself on two views of each
image, with lightly's ``BYOLProjectionHead`` and ``BYOLPredictionHead`` and
``NegativeCosineSimilarity`` (symmetrised over the views). The target's momentum rises 0.99 -> 1
over the run; encoders, optimiser and schedule are CASS's (:mod:`.base`).

Usable on its own::

    from cass_lightning.modules.byol import BYOLModule
    model = BYOLModule(arm="cnn", cnn="resnet18", img_size=64)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: ([view_1, view_2], labels)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from torch import Tensor, nn

from cass_lightning.modules.ema import momentum_copy
from cass_lightning.modules.one_arm import OneArmMethod


class BYOLModule(OneArmMethod):
    """BYOL on one backbone (``arm``); ``head``: the widths (BYOL's: 4096 hidden, 256 out) and
    the target's momentum; the rest as :class:`~.one_arm.OneArmMethod`."""

    method = "byol"
    method_name = "BYOL"
    default_head: ClassVar[dict[str, Any]] = {
        "hidden_dim": 4096, "dim": 256, "predictor_hidden_dim": 4096,
        "momentum_start": 0.99, "momentum_end": 1.0,
    }  # fmt: skip

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        h = self.head_cfg
        self.projection_head = BYOLProjectionHead(
            self.backbone.num_features, h["hidden_dim"], h["dim"]
        )
        self.prediction_head = BYOLPredictionHead(h["dim"], h["predictor_hidden_dim"], h["dim"])
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projection_head = momentum_copy(self.projection_head)
        self.use_ema("model.head.momentum", h["momentum_start"], h["momentum_end"])
        self.criterion = NegativeCosineSimilarity()

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.backbone, self.target_backbone),
                (self.projection_head, self.target_projection_head)]  # fmt: skip

    def data_views(self) -> str:
        return "pair"

    def forward(self, images: Tensor) -> Tensor:
        """The online projection for ``images`` (the collapse alarm watches it)."""
        return self.projection_head(self.backbone(images))

    @torch.no_grad()
    def forward_target(self, images: Tensor) -> Tensor:
        return self.target_projection_head(self.target_backbone(images))

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z0, z1 = self(views[0]), self(views[1])
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        t0, t1 = self.forward_target(views[0]), self.forward_target(views[1])
        loss = 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))
        return loss, {self.hparams.arm: z0}

    def validation_loss(self, images: Tensor) -> Tensor:
        """The online prediction against the target on the one evaluation view."""
        return self.criterion(self.prediction_head(self(images)), self.forward_target(images))
