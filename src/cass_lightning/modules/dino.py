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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from cass_lightning.batches import batch_images, batch_labels, multicrop_views
from cass_lightning.checks import check_choice, check_int, check_keys, check_positive
from cass_lightning.export import ExportedArm, export_backbones
from cass_lightning.modules.base import PretrainingModule
from cass_lightning.modules.finite import FiniteLossGuard, logs_this_step
from cass_lightning.modules.legacy import upgrade_dino_hparams
from cass_lightning.modules.optim import arm_param_groups, lightning_optimizers
from cass_lightning.norms import IMAGENET_MEAN, IMAGENET_STD

DINO_ARMS = ("cnn", "vit")
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


def _settings(name: str, given: dict[str, Any] | None, defaults: dict[str, Any]) -> dict:
    check_keys(f"model.{name}", (given or {}).keys(), defaults)
    return {**defaults, **(given or {})}


class DINOModule(PretrainingModule):
    """DINO self-distillation on one backbone (``arm``), the CASS paper's baseline.

    Args:
        arm: ``cnn`` or ``vit``: which of the two named encoders DINO trains (and exports).
        cnn, vit, img_size, in_chans, pretrained, cnn_weights_file, vit_weights_file,
            cnn_kwargs, vit_kwargs: the encoders exactly as for ``CASSModule`` (only ``arm``'s
            is built); ``img_size`` is the global crop size.
        global_crops: how many leading views are global (the teacher sees only those).
        head: the DINO projection head (see ``DINO_HEAD``).
        distillation: temperatures, centering and teacher momentum (see ``DINO_DISTILLATION``).
        optimizer: ``{name: adam|adamw|sgd, lr, weight_decay, weight_decay_end, ...}``; the
            decayed groups' weight decay follows a cosine from ``weight_decay`` to
            ``weight_decay_end`` (None keeps it constant), set every optimiser step; norms and
            biases are never decayed. scheduler: see ``optim.build_scheduler``.
        mean, std: the data normalisation, recorded in the export.
        batch_lr_factor: multiplies the learning rate. ``lr`` is per 256 images in DINO's rule;
            the apps set this factor from ``lr_scaling`` (``model=dino``: linear, base 256).
    """

    method = "dino"
    method_name = "DINO"

    def __init__(
        self,
        arm: str = "vit",
        cnn: str = "resnet50",
        vit: str = "vit_base_patch16_224",
        img_size: int = 224,
        in_chans: int = 3,
        pretrained: bool = False,
        cnn_weights_file: str | None = None,
        vit_weights_file: str | None = None,
        cnn_kwargs: dict[str, Any] | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        global_crops: int = 2,
        head: dict[str, Any] | None = None,
        distillation: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_lr_factor: float = 1.0,
    ) -> None:
        super().__init__()
        check_choice("model.arm", arm, DINO_ARMS)
        check_int("model.global_crops", global_crops, 1)
        self.head_cfg = _settings("head", head, DINO_HEAD)
        self.distill_cfg = d = _settings("distillation", distillation, DINO_DISTILLATION)
        if not 0.0 <= d["momentum_start"] <= d["momentum_end"] <= 1.0:
            raise ValueError("need 0 <= momentum_start <= momentum_end <= 1")
        self.save_hyperparameters()
        self.record_method()
        self.optimizer_cfg = o = {**DINO_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**DINO_SCHEDULER, **(scheduler or {})}
        check_positive("model.optimizer.lr", o["lr"])
        check_positive("batch_lr_factor", batch_lr_factor)
        for key in ("weight_decay", "weight_decay_end"):
            if o.get(key) is not None and float(o[key]) < 0:
                raise ValueError(f"model.optimizer.{key} must be >= 0 (or null), got {o[key]}")
        # Saved resolved, so a checkpoint says which weight-decay schedule it was trained with
        # (checkpoints from before the schedule lack the key and load with a constant decay).
        self.hparams["optimizer"] = dict(o)
        self.student_backbone, self.student_head = self._build(student=True)
        # lightly's head uses weight norm, which copy.deepcopy refuses: build the teacher fresh
        # (no weights to fetch) and give it the student's state.
        self.teacher_backbone, self.teacher_head = self._build(student=False)
        self.teacher_backbone.load_state_dict(self.student_backbone.state_dict())
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.keep_pooled(arm, self.student_backbone)  # for the online probe
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=self.head_cfg["dim"],
            warmup_teacher_temp=d["warmup_teacher_temp"],
            teacher_temp=d["teacher_temp"],
            warmup_teacher_temp_epochs=d["warmup_teacher_temp_epochs"],
            student_temp=d["student_temp"],
            center_momentum=d["center_momentum"],
        )
        self.finite = FiniteLossGuard(
            "DINO", "Use 32-true precision (bf16 gave NaN for DINO on a ResNet), lower the "
            "learning rate or clip gradients",
        )  # fmt: skip

    @classmethod
    def _upgrade(cls, hp: dict[str, Any]) -> dict[str, Any]:
        new = upgrade_dino_hparams(hp)
        stored = hp.get("optimizer") or {}
        if hp and "weight_decay_end" not in stored:
            # Trained before the weight-decay schedule existed: keep the constant decay it had.
            new["optimizer"] = {**stored, "weight_decay_end": None}
        return new

    def _build(self, student: bool) -> tuple[nn.Module, nn.Module]:
        hp, h = self.hparams, self.head_cfg
        kwargs: dict[str, Any] = {}
        if hp.arm == "vit":
            # Local crops are smaller than img_size: interpolate position embeddings and pad to
            # whole patches (no new parameters, so the export still loads into a plain ViT).
            kwargs = {"dynamic_img_size": True, "dynamic_img_pad": True}
        backbone, _ = self.build_arm(hp.arm, student=student, **kwargs)
        head = DINOProjectionHead(
            input_dim=backbone.num_features,
            hidden_dim=h["hidden_dim"],
            bottleneck_dim=h["bottleneck_dim"],
            output_dim=h["dim"],
            batch_norm=h["batch_norm"],
            freeze_last_layer=h["freeze_last_layer_epochs"],
            norm_last_layer=h["norm_last_layer"],
        )
        return backbone, head

    # ---------------------------------------------------------------- accessors
    @property
    def backbone(self) -> nn.Module:
        """The student backbone: the plain timm model that gets exported."""
        return self.student_backbone

    # ------------------------------------------------------- protocol and export
    def trained_arms(self) -> tuple[str, ...]:
        return (self.hparams.arm,)

    def arm_backbone(self, arm: str) -> nn.Module:
        if arm != self.hparams.arm:
            raise KeyError(f"this DINO run trains the {self.hparams.arm} arm, not {arm}")
        return self.student_backbone

    def data_views(self) -> str:
        return "dino"

    def exportable(self, network: str = "student") -> tuple[dict[str, ExportedArm], dict]:
        """The trained arm (the student, or with ``network="teacher"`` the EMA teacher that
        DINO's authors evaluate) and what ``meta.json`` says about it."""
        check_choice("network", network, ("student", "teacher"))
        hp, spec = self.hparams, self.specs()[self.hparams.arm]
        backbone = self.student_backbone if network == "student" else self.teacher_backbone
        meta = {"method": self.method, "network": network, "head": "features",
                "head_dim": spec.num_features, "img_size": hp.img_size,
                "mean": list(hp.mean), "std": list(hp.std)}  # fmt: skip
        return {hp.arm: ExportedArm(spec, backbone)}, meta

    def export(
        self, out_dir: str | Path, source: str | None = None, network: str = "student"
    ) -> Path:
        """Write ``<arm>.safetensors`` and ``meta.json`` (see :mod:`cass_lightning.export`)."""
        arms, meta = self.exportable(network)
        return export_backbones(arms, out_dir, meta, source=source)

    def teacher_momentum(self) -> float:
        """EMA momentum of the teacher at the current step (cosine, start -> end over the run)."""
        d = self.distill_cfg
        return self.along_run(d["momentum_start"], d["momentum_end"])

    def weight_decay_now(self) -> float:
        """Weight decay of the decayed groups at the current step: DINO's cosine from
        ``weight_decay`` to ``weight_decay_end`` (constant when that is None)."""
        o = self.optimizer_cfg
        start = float(o.get("weight_decay") or 0.0)
        end = o.get("weight_decay_end")
        return start if end is None else self.along_run(start, float(end))

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

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = multicrop_views(batch)
        n_global = min(self.hparams.global_crops, len(views))
        teacher_out = [self.forward_teacher(v) for v in views[:n_global]]
        student_out = [self(views[0])]
        first = self.pooled.get(self.hparams.arm)  # the online probe reads the first global crop
        student_out += [self(v) for v in views[1:]]
        if first is not None:
            self.pooled[self.hparams.arm] = first
        loss = self.criterion(teacher_out, student_out, epoch=self.current_epoch)
        self.finite.record(loss, self.global_step)  # read at the logging interval
        # Not in Lightning's progress bar: it reads those back every batch.
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=views[0].shape[0])
        self.log_learning_rates()
        if logs_this_step(self.trainer):  # Python numbers: a copy to the device each
            self.log("train/teacher_momentum", self.teacher_momentum(), on_step=True,
                     on_epoch=False)  # fmt: skip
            self.log(f"wd/{self.hparams.arm}", self.weight_decay_now(), on_step=True,
                     on_epoch=False)  # fmt: skip
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Student-teacher cross-entropy on the one evaluation view (no center update).

        Not DINO's training loss (which needs two views); a cheap agreement reading that
        rises when the student drifts from the teacher.
        """
        images, d = batch_images(batch), self.distill_cfg
        t = F.softmax((self.forward_teacher(images) - self.criterion.center[0]) /
                      d["teacher_temp"], dim=-1)  # fmt: skip
        s = F.log_softmax(self(images) / d["student_temp"], dim=-1)
        loss = -(t * s).sum(dim=-1).mean()
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # DINO keeps the head's last layer fixed during the first epoch(s) for stability.
        self.student_head.cancel_last_layer_gradients(self.current_epoch)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """This step's weight decay on the decayed groups, the optimiser step, then the
        teacher's EMA update towards the updated student.

        Here rather than in ``training_step`` so both schedules move once per optimiser step,
        also under gradient accumulation. Norms and biases (``*_no_decay``) stay at 0.
        """
        decay = self.weight_decay_now()
        for group in optimizer.param_groups:
            if not str(group.get("name", "")).endswith("_no_decay"):
                group["weight_decay"] = decay
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        momentum = self.teacher_momentum()
        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)

    # --------------------------------------------------------------- optimiser
    def param_groups(self) -> list[dict[str, Any]]:
        lr = float(self.optimizer_cfg["lr"]) * float(self.hparams.batch_lr_factor)
        wd = float(self.optimizer_cfg.get("weight_decay", 0.0))
        return arm_param_groups(self.hparams.arm, [self.student_backbone, self.student_head],
                                lr=lr, weight_decay=wd)  # fmt: skip

    def configure_optimizers(self) -> Any:
        lr = float(self.optimizer_cfg["lr"]) * float(self.hparams.batch_lr_factor)
        return lightning_optimizers(
            self.param_groups(),
            {**self.optimizer_cfg, "lr": lr},
            self.scheduler_cfg,
            self.trainer,
        )
