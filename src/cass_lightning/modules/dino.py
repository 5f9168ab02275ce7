"""DINOModule: the paper's self-supervised baseline, DINO, on one CASS encoder.

The CASS paper compares against DINO trained on the same backbones (ResNet-50 and ViT-B/16), one
network at a time. This module trains one timm backbone (the CNN or the ViT arm, named as in
:class:`~cass_lightning.modules.cass.CASSModule` so one config drives both) with lightly's DINO
parts: a student and an EMA teacher, each backbone + ``DINOProjectionHead``, ``DINOLoss`` with
centering and teacher-temperature warmup, and multi-crop (the teacher sees the global crops
only). Batches must be multi-crop lists: set ``data.train_views=dino`` (``model=dino`` does).

Usable on its own::

    from cass_lightning.modules.dino import DINOModule
    model = DINOModule(arm="cnn", cnn="resnet18", img_size=64)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: [[view, ...], labels]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from cass_lightning import __version__
from cass_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cass_lightning.encoders import build_encoder, encoder_spec
from cass_lightning.export import (
    META_FILE,
    atomic_save,
    atomic_write_text,
    contiguous_state,
)
from cass_lightning.modules.cass import describe_last_finite
from cass_lightning.optim import arm_param_groups, group_learning_rates, lightning_optimizers

DINO_ARMS = ("cnn", "vit")
#: DINO's reference optimiser for ViTs: AdamW, lr 5e-4 (per 256 images), weight decay 0.04.
DINO_OPTIMIZER: dict[str, Any] = {"name": "adamw", "lr": 5e-4, "weight_decay": 0.04}
#: DINO's reference schedule: linear warmup then one cosine over the run.
DINO_SCHEDULER: dict[str, Any] = {"name": "warmup_cosine", "warmup_fraction": 0.1}


def batch_views(batch: Any) -> list[Tensor]:
    """The list of multi-crop views of a batch: ``[views, labels]``, ``views`` or a dict with
    ``"views"`` (what :meth:`DINOModule.on_after_batch_transfer` makes).

    A single image tensor means the loader gives CASS's one-view batches, which DINO cannot
    train on: that is the common configuration mistake, so it gets its own message.
    """
    views: Any = batch
    if isinstance(batch, Mapping):
        views = batch.get("views")
    elif isinstance(batch, Sequence) and len(batch) > 0 and not isinstance(batch[0], Tensor):
        views = batch[0]
    if isinstance(views, Tensor) or (
        isinstance(batch, Sequence) and len(batch) > 0 and isinstance(batch[0], Tensor)
    ):
        raise ValueError(
            "DINOModule needs multi-crop batches (a list of views per batch), but got a single "
            "image tensor. Set data.train_views=dino (model=dino does) or use "
            "cass_lightning.data.views.dino_views as the training transform."
        )
    if (
        not isinstance(views, Sequence)
        or len(views) < 2
        or not all(isinstance(v, Tensor) and v.ndim == 4 for v in views)
    ):
        raise ValueError(
            "DINOModule expects [views, labels] with views a list of at least two "
            f"(batch, channels, H, W) tensors; got {type(views).__name__}"
        )
    return list(views)


class DINOModule(L.LightningModule):
    """DINO self-distillation on one backbone (``arm``), the CASS paper's baseline.

    Args:
        arm: ``cnn`` or ``vit``: which of the two named encoders DINO trains (and exports).
        cnn, vit: timm names of the encoders, as in ``CASSModule`` (only ``arm``'s is built).
        img_size: global crop size (ViTs are built for it, with dynamic sizes for local crops).
        in_chans: input channels.
        pretrained: load ImageNet weights (from ``weights_file`` offline, else the hub).
        weights_file: ``.safetensors``/``.pth`` weights of the trained arm.
        global_crops: how many leading views are global (the teacher sees only those).
        head_dim: width of the DINO head's output (prototypes). DINO's reference uses 65536;
            the default 2048 keeps CPU runs and small medical sets cheap.
        head_hidden_dim, head_bottleneck_dim: DINO head MLP widths (reference: 2048, 256).
        head_batch_norm: BatchNorm in the head MLP (DINO uses it for ResNets, not for ViTs).
        norm_last_layer: weight-normalised last layer with frozen norm (reference default).
        freeze_last_layer_epochs: epochs during which the last head layer gets no update.
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: teacher softmax
            temperature, warmed up linearly from ``warmup_teacher_temp`` over the first epochs.
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher-output center.
        momentum_start, momentum_end: teacher EMA momentum, cosine from start to end over the
            run (DINO: 0.996 -> 1).
        optimizer: ``{name: adam|adamw|sgd, lr, weight_decay, ...}``; norms and biases are never
            decayed. scheduler: see ``optim.build_scheduler``.
        mean, std: the data normalisation, recorded in the export.
        backbone_kwargs: extra ``timm.create_model`` arguments for the backbone.
        lr_scale: multiplies the learning rate (the apps set it from the lr scaling rule).
    """

    method_name = "DINO"

    def __init__(
        self,
        arm: str = "vit",
        cnn: str = "resnet50",
        vit: str = "vit_base_patch16_224",
        img_size: int = 224,
        in_chans: int = 3,
        pretrained: bool = False,
        weights_file: str | None = None,
        global_crops: int = 2,
        head_dim: int = 2048,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        freeze_last_layer_epochs: int = 1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        momentum_start: float = 0.996,
        momentum_end: float = 1.0,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        backbone_kwargs: dict[str, Any] | None = None,
        lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if arm not in DINO_ARMS:
            raise ValueError(f"arm must be one of {DINO_ARMS}, got {arm!r}")
        if global_crops < 1:
            raise ValueError(f"global_crops must be >= 1, got {global_crops}")
        if not 0.0 <= momentum_start <= momentum_end <= 1.0:
            raise ValueError("need 0 <= momentum_start <= momentum_end <= 1")
        self.save_hyperparameters()
        self.optimizer_cfg = {**DINO_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**DINO_SCHEDULER, **(scheduler or {})}
        self.student_backbone, self.student_head = self._build(pretrained, weights_file)
        # lightly's head uses weight norm, which copy.deepcopy refuses: build the teacher fresh
        # (no weights to fetch) and give it the student's state.
        self.teacher_backbone, self.teacher_head = self._build(False, None)
        self.teacher_backbone.load_state_dict(self.student_backbone.state_dict())
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=head_dim,
            warmup_teacher_temp=warmup_teacher_temp,
            teacher_temp=teacher_temp,
            warmup_teacher_temp_epochs=warmup_teacher_temp_epochs,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )
        self._last_finite: dict[str, float] = {}

    def _build(self, pretrained: bool, weights_file: str | None) -> tuple[nn.Module, nn.Module]:
        hp = self.hparams
        kwargs: dict[str, Any] = {}
        if hp.arm == "vit":
            # Local crops are smaller than img_size: interpolate position embeddings and pad to
            # whole patches (no new parameters, so the export still loads into a plain ViT).
            kwargs = {"img_size": hp.img_size, "dynamic_img_size": True, "dynamic_img_pad": True}
        kwargs.update(hp.backbone_kwargs or {})
        backbone, _ = build_encoder(
            self.backbone_name,
            head="features",
            pretrained=pretrained,
            weights_file=weights_file,
            in_chans=hp.in_chans,
            **kwargs,
        )
        head = DINOProjectionHead(
            input_dim=backbone.num_features,
            hidden_dim=hp.head_hidden_dim,
            bottleneck_dim=hp.head_bottleneck_dim,
            output_dim=hp.head_dim,
            batch_norm=hp.head_batch_norm,
            freeze_last_layer=hp.freeze_last_layer_epochs,
            norm_last_layer=hp.norm_last_layer,
        )
        return backbone, head

    # ---------------------------------------------------------------- accessors
    @property
    def backbone_name(self) -> str:
        """The timm name of the trained arm."""
        return self.hparams[self.hparams.arm]

    @property
    def backbone(self) -> nn.Module:
        """The student backbone: the plain timm model that gets exported."""
        return self.student_backbone

    def specs(self) -> dict[str, Any]:
        """How to rebuild the trained arm with plain timm (one entry, keyed by ``arm``)."""
        hp = self.hparams
        img_size = hp.img_size if hp.arm == "vit" else None
        return {hp.arm: encoder_spec(self.backbone_name, self.student_backbone, img_size,
                                     hp.in_chans)}  # fmt: skip

    def teacher_momentum(self) -> float:
        """EMA momentum of the teacher at the current step (cosine, start -> end over the run).

        An open-ended run (no step estimate) keeps the start value.
        """
        hp = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if not math.isfinite(total) or total < 2:
            return float(hp.momentum_start)
        step = min(self.global_step, int(total))
        return float(cosine_schedule(step, int(total), hp.momentum_start, hp.momentum_end))

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
        if (
            isinstance(batch, Sequence)
            and len(batch) == 2
            and isinstance(batch[0], Sequence)
            and all(isinstance(v, Tensor) for v in batch[0])
        ):
            return {"image": batch[0][0], "views": list(batch[0]), "label": batch[1]}
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = batch_views(batch)
        n_global = min(self.hparams.global_crops, len(views))
        teacher_out = [self.forward_teacher(v) for v in views[:n_global]]
        student_out = [self(v) for v in views]
        loss = self.criterion(teacher_out, student_out, epoch=self.current_epoch)
        self._check_finite(loss)
        batch_size = views[0].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=batch_size)  # fmt: skip
        lrs = group_learning_rates(self.trainer.optimizers[0])
        self.log_dict(lrs, on_step=True, on_epoch=False)
        self.log("train/teacher_momentum", self.teacher_momentum(), on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Student-teacher cross-entropy on the one evaluation view (no center update).

        Not DINO's training loss (which needs two views); a cheap agreement reading that
        rises when the student drifts from the teacher.
        """
        if isinstance(batch, Mapping):
            images = batch["image"]
        else:
            images = batch[0] if isinstance(batch, Sequence) else batch
        if isinstance(images, Sequence):  # a multi-crop validation loader: its first view
            images = images[0]
        t = F.softmax((self.forward_teacher(images) - self.criterion.center[0]) /
                      self.hparams.teacher_temp, dim=-1)  # fmt: skip
        s = F.log_softmax(self(images) / self.hparams.student_temp, dim=-1)
        loss = -(t * s).sum(dim=-1).mean()
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _check_finite(self, loss: Tensor) -> None:
        """Stop on a non-finite loss (as DINO's reference does), naming the last good step.

        No checkpoint is written after this, so ``last.ckpt`` keeps the last good state.
        """
        if torch.isfinite(loss):
            self._last_finite = {"step": self.global_step, "loss": float(loss.detach())}
            return
        previous = describe_last_finite(self._last_finite)
        raise FloatingPointError(
            f"non-finite DINO loss ({float(loss.detach())}) at global step {self.global_step}; "
            f"{previous}. Use 32-true precision (bf16 gave NaN for DINO on a ResNet), lower "
            "the learning rate or clip gradients; last.ckpt holds the last good state."
        )

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # DINO keeps the head's last layer fixed during the first epoch(s) for stability.
        self.student_head.cancel_last_layer_gradients(self.current_epoch)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimiser step, then the teacher's EMA update towards the updated student.

        Here rather than in ``training_step`` so the teacher moves once per optimiser step,
        also under gradient accumulation.
        """
        super().optimizer_step(*args, **kwargs)
        momentum = self.teacher_momentum()
        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)

    # --------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        lr = float(self.optimizer_cfg["lr"]) * self.hparams.lr_scale
        wd = float(self.optimizer_cfg.get("weight_decay", 0.0))
        groups = arm_param_groups(self.hparams.arm, [self.student_backbone, self.student_head],
                                  lr=lr, weight_decay=wd)  # fmt: skip
        return lightning_optimizers(
            groups, {**self.optimizer_cfg, "lr": lr}, self.scheduler_cfg, self.trainer
        )

    # ------------------------------------------------------------------ export
    def export(
        self, out_dir: str | Path, source: str | None = None, network: str = "student"
    ) -> Path:
        """Write ``<arm>.safetensors`` and a ``meta.json`` that ``export.load_backbone`` reads.

        ``network="teacher"`` exports the EMA teacher instead (DINO's authors evaluate the
        teacher). Refuses to overwrite an export; files are written atomically.
        """
        if network not in ("student", "teacher"):
            raise ValueError(f"network must be 'student' or 'teacher', got {network!r}")
        hp = self.hparams
        out = Path(out_dir)
        file = f"{hp.arm}.safetensors"
        existing = [n for n in (file, META_FILE) if (out / n).exists()]
        if existing:
            raise FileExistsError(
                f"{out} already holds an export ({', '.join(existing)}); choose another folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        backbone = self.student_backbone if network == "student" else self.teacher_backbone
        atomic_save(contiguous_state(backbone), out / file)
        spec = self.specs()[hp.arm]
        meta: dict[str, Any] = {
            "format": "cass-lightning-export/1",
            "cass_lightning_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "method": "dino",
            "network": network,
            "head": "features",
            "head_dim": spec.num_features,
            "mean": list(hp.mean),
            "std": list(hp.std),
            hp.arm: {
                "timm_name": spec.timm_name,
                "img_size": spec.img_size,
                "in_chans": spec.in_chans,
                "num_classes": spec.num_classes,
                "num_features": spec.num_features,
                "file": file,
                "projector_file": None,
            },
        }
        atomic_write_text(json.dumps(meta, indent=2), out / META_FILE)
        return out
