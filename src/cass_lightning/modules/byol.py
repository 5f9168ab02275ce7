"""BYOLModule: Bootstrap Your Own Latent on one CASS encoder, from lightly's parts.

A third method beside CASS and DINO, to ask whether CASS's gain comes from pairing two
architectures or from the cosine objective alone: BYOL trains ONE encoder (``arm``) against an
EMA copy of itself on two views of each image, with lightly's ``BYOLProjectionHead`` and
``BYOLPredictionHead``, ``NegativeCosineSimilarity`` (symmetrised over the two views),
``update_momentum`` and a ``cosine_schedule`` of the momentum (0.99 -> 1 over the run). The
encoders, resolution, init and epochs come from the same settings as CASS's and DINO's.

Usable on its own::

    from cass_lightning.modules.byol import BYOLModule
    model = BYOLModule(arm="cnn", cnn="resnet18", img_size=64)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: ([view_1, view_2], labels)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from cass_lightning.batches import batch_images, same_size_views
from cass_lightning.checks import check_choice, check_keys, check_positive
from cass_lightning.losses import normalized_std
from cass_lightning.modules.base import PretrainingModule
from cass_lightning.modules.finite import FiniteLossGuard, logs_this_step
from cass_lightning.modules.optim import arm_param_groups
from cass_lightning.norms import IMAGENET_MEAN, IMAGENET_STD

#: The optimiser and schedule of CASS (``cass.PAPER_OPTIMIZER``), so the comparison changes
#: only the method: Adam, lr 1e-3, no weight decay, the cyclic cosine stepped every iteration.
BYOL_OPTIMIZER: dict[str, Any] = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
BYOL_SCHEDULER: dict[str, Any] = {"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6}
#: BYOL's heads (the paper's widths: 4096 hidden, 256 out) and the target's EMA momentum.
BYOL_HEAD: dict[str, Any] = {
    "hidden_dim": 4096, "dim": 256, "predictor_hidden_dim": 4096,
    "momentum_start": 0.99, "momentum_end": 1.0,
}  # fmt: skip


class BYOLModule(PretrainingModule):
    """BYOL on one backbone (``arm``).

    Args:
        arm: ``cnn`` or ``vit``: which of the two named encoders BYOL trains (and exports).
        cnn, vit, img_size, in_chans, pretrained, cnn_weights_file, vit_weights_file,
            cnn_kwargs, vit_kwargs: the encoders exactly as for ``CASSModule``.
        head: projection/prediction widths and the target momentum (see ``BYOL_HEAD``).
        optimizer, scheduler: as for ``CASSModule`` (defaults: CASS's).
        mean, std: the data normalisation, recorded in the export.
        batch_lr_factor: multiplies the learning rate (the apps' lr scaling rule).
    """

    method = "byol"
    method_name = "BYOL"

    def __init__(
        self,
        arm: str = "vit",
        cnn: str = "resnet50",
        vit: str = "vit_base_patch16_384",
        img_size: int = 384,
        in_chans: int = 3,
        pretrained: bool = False,
        cnn_weights_file: str | None = None,
        vit_weights_file: str | None = None,
        cnn_kwargs: dict[str, Any] | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_lr_factor: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("model.arm", arm, ("cnn", "vit"))
        check_keys("model.head", (head or {}).keys(), BYOL_HEAD)
        self.head_cfg = h = {**BYOL_HEAD, **(head or {})}
        if not 0.0 <= h["momentum_start"] <= h["momentum_end"] <= 1.0:
            raise ValueError("need 0 <= model.head.momentum_start <= momentum_end <= 1")
        self.save_hyperparameters()
        self.record_method()
        self.optimizer_cfg = {**BYOL_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**BYOL_SCHEDULER, **(scheduler or {})}
        check_positive("model.optimizer.lr", self.optimizer_cfg["lr"])
        check_positive("batch_lr_factor", batch_lr_factor)
        self.backbone, _ = self.build_arm(arm)
        width = int(self.backbone.num_features)
        self.projection_head = BYOLProjectionHead(width, h["hidden_dim"], h["dim"])
        self.prediction_head = BYOLPredictionHead(h["dim"], h["predictor_hidden_dim"], h["dim"])
        # The target: an EMA copy of the online backbone and projection, never trained directly.
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)
        self.keep_pooled(arm, self.backbone)  # after the copies: the target keeps no features
        self.criterion = NegativeCosineSimilarity()
        self.finite = FiniteLossGuard(
            "BYOL", "Lower the learning rate, use 32-true precision or gradient clipping"
        )

    # ------------------------------------------------------- protocol and export
    def trained_arms(self) -> tuple[str, ...]:
        return (self.hparams.arm,)

    def arm_backbone(self, arm: str) -> nn.Module:
        if arm != self.hparams.arm:
            raise KeyError(f"this BYOL run trains the {self.hparams.arm} arm, not {arm}")
        return self.backbone

    def data_views(self) -> str:
        return "pair"

    # ------------------------------------------------------------------- forward
    def forward(self, images: Tensor) -> Tensor:
        """The online prediction for ``images``."""
        return self.prediction_head(self.projection_head(self.backbone(images)))

    @torch.no_grad()
    def forward_target(self, images: Tensor) -> Tensor:
        return self.target_projection_head(self.target_backbone(images)).detach()

    def momentum_now(self) -> float:
        """The target's EMA momentum at this step: cosine from start to end over the run."""
        return self.along_run(self.head_cfg["momentum_start"], self.head_cfg["momentum_end"])

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = same_size_views(batch)
        if len(views) != 2:
            raise ValueError(
                f"BYOL compares two views of each image, got {len(views)}; set "
                "data.train_views=pair (cass-pretrain model=byol asks for it) or give "
                "([view_1, view_2], labels)"
            )
        x0, x1 = views
        p0 = self(x0)
        first = self.pooled.get(self.hparams.arm)  # the online probe reads the first view
        p1 = self(x1)
        if first is not None:
            self.pooled[self.hparams.arm] = first
        z0, z1 = self.forward_target(x0), self.forward_target(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        self.finite.record(loss, self.global_step, {self.hparams.arm: p0})
        batch_size = x0.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log(f"train/{self.hparams.arm}_std", normalized_std(p0.detach()), on_step=True,
                 on_epoch=True, batch_size=batch_size)  # fmt: skip
        self.log_learning_rates()
        if self._trainer is not None and logs_this_step(self.trainer):
            self.log("train/target_momentum", self.momentum_now(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The online prediction against the target on the one evaluation view."""
        images = batch_images(batch)
        loss = self.criterion(self(images), self.forward_target(images))
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """The optimiser step, then the target's EMA update (once per optimiser step, also
        under gradient accumulation)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        momentum = self.momentum_now()
        update_momentum(self.backbone, self.target_backbone, m=momentum)
        update_momentum(self.projection_head, self.target_projection_head, m=momentum)

    # ----------------------------------------------------------------- optimiser
    def param_groups(self) -> list[dict[str, Any]]:
        lr = float(self.optimizer_cfg["lr"]) * float(self.hparams.batch_lr_factor)
        wd = float(self.optimizer_cfg.get("weight_decay") or 0.0)
        modules = [self.backbone, self.projection_head, self.prediction_head]
        return arm_param_groups(self.hparams.arm, modules, lr=lr, weight_decay=wd)
