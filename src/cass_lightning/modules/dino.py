"""DINOModule: the paper's self-supervised baseline, DINO, on one CASS encoder.

The CASS paper compares against DINO trained on the same backbones (ResNet-50 and ViT-B/16), one
network at a time. This module trains one timm backbone (the CNN or the ViT arm, named and loaded
exactly as :class:`~cass_lightning.modules.cass.CASSModule` names and loads them, so one config
drives both) with lightly's DINO parts: a student and an EMA teacher, each backbone +
``DINOProjectionHead``, ``DINOLoss`` with centering and teacher-temperature warmup, and
multi-crop (the teacher sees the global crops only). Batches must be multi-crop lists: set
``data.train_views=dino`` (``cass-pretrain model=dino`` asks the datamodule for them).

Usable on its own::

    from cass_lightning.modules.dino import DINOModule
    model = DINOModule(arm="cnn", cnn="resnet18", img_size=64)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: [[view, ...], labels]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from torch import Tensor, nn

from cass_lightning.batches import batch_labels, multicrop_views
from cass_lightning.checks import check_int
from cass_lightning.modules.encoder_settings import merged_settings
from cass_lightning.modules.legacy import upgrade_dino_hparams
from cass_lightning.modules.one_arm import OneArmMethod

#: DINO's reference optimiser for ViTs: AdamW, lr 5e-4 per 256 images (the apps scale it by the
#: effective batch through ``lr_scaling``, see ``conf/model/dino.yaml``), and a weight decay that
#: rises along a cosine from ``weight_decay`` to ``weight_decay_end`` (None: constant) over the run.
DINO_OPTIMIZER: dict[str, Any] = {
    "name": "adamw", "lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4,
}  # fmt: skip
#: DINO's reference schedule: linear warmup then one cosine over the run.
DINO_SCHEDULER: dict[str, Any] = {"name": "warmup_cosine", "warmup_fraction": 0.1}
#: The projection head. DINO's reference uses 65536 prototypes; 2048 keeps CPU runs and small
#: medical sets cheap. ``batch_norm``: DINO uses it for ResNets, not for ViTs.
DINO_HEAD: dict[str, Any] = {
    "dim": 2048, "hidden_dim": 2048, "bottleneck_dim": 256, "batch_norm": False,
    "norm_last_layer": True, "freeze_last_layer_epochs": 1,
}  # fmt: skip
#: Teacher/student temperatures, centering, and the teacher's EMA momentum (cosine 0.996 -> 1).
DINO_DISTILLATION: dict[str, Any] = {
    "teacher_temp": 0.04, "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0,
    "student_temp": 0.1, "center_momentum": 0.9, "momentum_start": 0.996, "momentum_end": 1.0,
}  # fmt: skip


class DINOModule(OneArmMethod):
    """DINO self-distillation on one backbone (``arm``), the CASS paper's baseline.

    Args:
        global_crops: how many leading views are global (the teacher sees only those).
        head: the DINO projection head (see ``DINO_HEAD``), as ``model.head``.
        distillation: temperatures, centering and teacher momentum (see ``DINO_DISTILLATION``).
        settings: ``arm`` (``cnn`` or ``vit``: which encoder DINO trains and exports) and the
            arguments every method takes (:class:`~.base.PretrainingModule`; ``img_size`` is
            the global crop size). ``optimizer``: ``{name, lr, weight_decay, weight_decay_end,
            ...}``; the decayed groups' weight decay follows a cosine from ``weight_decay`` to
            ``weight_decay_end`` (None keeps it constant), set every optimiser step; norms and
            biases are never decayed. ``lr`` is per 256 images in DINO's rule: the apps set
            ``batch_lr_factor`` from ``lr_scaling`` (``model=dino``: linear, base 256).
    """

    method = "dino"
    method_name = "DINO"
    default_optimizer = DINO_OPTIMIZER
    default_scheduler = DINO_SCHEDULER
    finite_advice = ("Use 32-true precision (bf16 gave NaN for DINO on a ResNet), lower the "
                     "learning rate or clip gradients")  # fmt: skip
    export_networks = ("student", "teacher")
    default_head = DINO_HEAD
    backbone_attribute = "student_backbone"

    def __init__(
        self, global_crops: int = 2, distillation: dict[str, Any] | None = None, **settings: Any
    ) -> None:
        super().__init__(**settings)
        check_int("model.global_crops", global_crops, 1)
        self.distill_cfg = d = merged_settings("distillation", distillation, DINO_DISTILLATION)
        o = self.optimizer_cfg
        for key in ("weight_decay", "weight_decay_end"):
            if o.get(key) is not None and float(o[key]) < 0:
                raise ValueError(f"model.optimizer.{key} must be >= 0 (or null), got {o[key]}")
        # Saved resolved, so a checkpoint says which weight-decay schedule it was trained with
        # (checkpoints from before the schedule lack the key and load with a constant decay).
        self.hparams["optimizer"] = dict(o)
        self.student_head = self._head()
        # lightly's head uses weight norm, which copy.deepcopy refuses: build the teacher fresh
        # (no weights to fetch) and give it the student's state.
        self.teacher_backbone, _ = self.build_arm(self.hparams.arm, student=False,
                                                  **self.backbone_options())  # fmt: skip
        self.teacher_head = self._head()
        for student, teacher in self.momentum_pairs():
            teacher.load_state_dict(student.state_dict())
            teacher.requires_grad_(False)
        self.use_ema("model.distillation.momentum", d["momentum_start"], d["momentum_end"])
        self.criterion = DINOLoss(
            output_dim=self.head_cfg["dim"],
            warmup_teacher_temp=d["warmup_teacher_temp"],
            teacher_temp=d["teacher_temp"],
            warmup_teacher_temp_epochs=d["warmup_teacher_temp_epochs"],
            student_temp=d["student_temp"],
            center_momentum=d["center_momentum"],
        )

    @classmethod
    def _upgrade(cls, hp: dict[str, Any]) -> dict[str, Any]:
        new = upgrade_dino_hparams(hp)
        stored = hp.get("optimizer") or {}
        if hp and "weight_decay_end" not in stored:
            # Trained before the weight-decay schedule existed: keep the constant decay it had.
            new["optimizer"] = {**stored, "weight_decay_end": None}
        return new

    def backbone_options(self) -> dict[str, Any]:
        if self.hparams.arm != "vit":
            return {}
        # Local crops are smaller than img_size: interpolate position embeddings and pad to
        # whole patches (no new parameters, so the export still loads into a plain ViT).
        return {"dynamic_img_size": True, "dynamic_img_pad": True}

    def _head(self) -> nn.Module:
        h = self.head_cfg
        return DINOProjectionHead(
            input_dim=self.student_backbone.num_features,
            hidden_dim=h["hidden_dim"],
            bottleneck_dim=h["bottleneck_dim"],
            output_dim=h["dim"],
            batch_norm=h["batch_norm"],
            freeze_last_layer=h["freeze_last_layer_epochs"],
            norm_last_layer=h["norm_last_layer"],
        )

    # ------------------------------------------------------- protocol and export
    @property
    def backbone(self) -> nn.Module:
        """The student backbone: the plain timm model that gets exported."""
        return self.student_backbone

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.student_backbone, self.teacher_backbone),
                (self.student_head, self.teacher_head)]  # fmt: skip

    def network_backbone(self, arm: str, network: str) -> nn.Module:
        """The student, or the EMA teacher that DINO's authors evaluate."""
        return self.arm_backbone(arm) if network == "student" else self.teacher_backbone

    def data_views(self) -> str:
        return "dino"

    def weight_decay_now(self) -> float:
        """Weight decay of the decayed groups at the current step: DINO's cosine from
        ``weight_decay`` to ``weight_decay_end`` (constant when that is None)."""
        o = self.optimizer_cfg
        start = float(o.get("weight_decay") or 0.0)
        end = o.get("weight_decay_end")
        return start if end is None else self.along_run(start, float(end))

    def schedule_readings(self) -> dict[str, float]:
        return {f"wd/{self.hparams.arm}": self.weight_decay_now()}

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor) -> Tensor:
        """The student's DINO-head output for ``images``."""
        return self.student_head(self.student_backbone(images))

    @torch.no_grad()
    def forward_teacher(self, images: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(images))

    # ---------------------------------------------------------------- training
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn ``[views, labels]`` into ``{"image": first global view, "views", "label"}``.

        The shared callbacks (throughput, sample grids) read one image tensor per batch via
        ``batch_images``; the dict's ``image`` gives them the first global crop, so they count
        and show the images DINO trains on. Validation batches (one tensor) pass unchanged.
        """
        try:
            views = multicrop_views(batch)
        except (ValueError, TypeError, KeyError):
            return batch
        return {"image": views[0], "views": views, "label": batch_labels(batch)}

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        n_global = min(self.hparams.global_crops, len(views))
        teacher_out = [self.forward_teacher(v) for v in views[:n_global]]
        student_out = [self(v) for v in views]
        loss = self.criterion(teacher_out, student_out, epoch=self.current_epoch)
        return loss, {self.hparams.arm: student_out[0]}

    def validation_loss(self, images: Tensor) -> Tensor:
        """Student-teacher cross-entropy on the one evaluation view (no center update).

        Not DINO's training loss (which needs two views); a cheap agreement reading that
        rises when the student drifts from the teacher.
        """
        d = self.distill_cfg
        t = F.softmax((self.forward_teacher(images) - self.criterion.center[0]) /
                      d["teacher_temp"], dim=-1)  # fmt: skip
        s = F.log_softmax(self(images) / d["student_temp"], dim=-1)
        return -(t * s).sum(dim=-1).mean()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # DINO keeps the head's last layer fixed during the first epoch(s) for stability.
        self.student_head.cancel_last_layer_gradients(self.current_epoch)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """This step's weight decay on the decayed groups, then the step (and the teacher's
        update, see the base). Norms and biases (``*_no_decay``) stay at 0."""
        decay = self.weight_decay_now()
        for group in optimizer.param_groups:
            if not str(group.get("name", "")).endswith("_no_decay"):
                group["weight_decay"] = decay
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
