"""ClassifierModule: one CASS arm (or a baseline backbone) with a fresh linear head, fine-tuned.

The downstream protocol of the paper: a new ``num_classes`` linear head, Adam lr 3e-4, the
per-iteration cyclic cosine, sigmoid focal loss (alpha 1, gamma 2) with per-class weights.
Usable on its own::

    from cass_lightning.modules.classifier import ClassifierModule
    model = ClassifierModule(arm="cnn", init="export", weights="runs/.../export", num_classes=6)
    lightning.Trainer(max_epochs=50).fit(model, train_loader, val_loader)  # (images, targets)

Constructor arguments are plain values, so ``save_hyperparameters``/``load_from_checkpoint`` work;
the resolved ``timm_name``/``img_size`` are recorded, so a saved model reloads without its
original weights via ``ClassifierModule.load_from_checkpoint(path, init="random", weights=None)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cass_lightning.batches import images_and_targets
from cass_lightning.checks import check_choice
from cass_lightning.encoders import record_of
from cass_lightning.losses import sigmoid_focal_loss
from cass_lightning.modules.arm_source import ARMS, ArmSource, build_backbone, read_arm_source
from cass_lightning.modules.finite import (
    FiniteLossGuard,
    GuardsFiniteLoss,
    logs_this_step,
    non_finite_tensors,
)
from cass_lightning.modules.metrics import (
    METRIC_NAMES,
    PerClassBreakdown,
    build_metrics,
    f1_macro_scope,
)
from cass_lightning.modules.optim import (
    arm_param_groups,
    group_learning_rates,
    lightning_optimizers,
)

MODES = ("finetune", "linear")
LOSSES = ("focal", "ce", "bce")
STAGES = ("train", "val", "test")
#: The checkpoint key holding what a classifier export needs beyond the hyperparameters.
EXPORT_RECORD_KEY = "classifier_export"
#: The paper's fine-tuning optimiser: Adam, lr 3e-4, no weight decay.
FINETUNE_OPTIMIZER: dict[str, Any] = {"name": "adam", "lr": 3e-4, "weight_decay": 0.0}
#: The same per-iteration cyclic cosine as pretraining.
FINETUNE_SCHEDULER: dict[str, Any] = {"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6}


class ClassifierModule(GuardsFiniteLoss, L.LightningModule):
    """A timm backbone with a fresh linear head, trained with the paper's downstream recipe.

    Args:
        arm: ``cnn`` or ``vit``: which arm of a CASS export/checkpoint to fine-tune.
        init: ``export`` (a folder from ``cass-export``/pretraining), ``checkpoint`` (a CASS
            ``.ckpt``), ``imagenet`` (supervised baseline; ``weights`` a ``.safetensors``/``.pth``
            file, or None to download) or ``random``.
        weights: the export folder, checkpoint or weights file, per ``init``.
        timm_name: the backbone for ``imagenet``/``random`` (default: the paper's for the arm);
            read from the weights otherwise.
        img_size: input size (ViTs are built for it; follows the weights for export/checkpoint).
        in_chans: input channels (``imagenet``/``random``).
        num_classes: width of the new head.
        multi_label: multi-hot float targets (else integer class targets).
        mode: ``finetune`` (train everything) or ``linear`` (frozen backbone with BatchNorm and
            dropout in eval mode; only the head learns; Lightning then warns that modules are
            in eval mode at the start of training, which is intended).
        loss: ``focal`` (paper), ``bce`` or ``ce`` (multi-class only).
        class_weights: per-class loss weights (``None``: unweighted).
        focal_alpha, focal_gamma: focal loss scale and focusing exponent (paper: 1 and 2).
        optimizer, scheduler: as for ``CASSModule``; defaults Adam 3e-4 and the cyclic cosine.
        monitor: the metric the app early-stops and checkpoints on (``val/loss`` or
            ``val/<metric>``); ``monitor_mode`` says min or max.
        source: what :func:`read_arm_source` returned for these settings, when the caller has
            already read it (the app does, to size the data); not a hyperparameter.

    After a test pass, ``test_breakdown`` holds its per-class F1 and support and (multi-class)
    its confusion matrix (see :class:`~.metrics.PerClassBreakdown`); ``None`` before.
    """

    def __init__(
        self,
        arm: str = "cnn",
        init: str = "export",
        weights: str | None = None,
        timm_name: str | None = None,
        img_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 2,
        multi_label: bool = False,
        mode: str = "finetune",
        loss: str = "focal",
        class_weights: Sequence[float] | None = None,
        focal_alpha: float = 1.0,
        focal_gamma: float = 2.0,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        monitor: str = "val/f1_macro",
        source: ArmSource | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["source"])
        check_choice("arm", arm, ARMS)
        check_choice("mode", mode, MODES)
        check_choice("loss", loss, LOSSES)
        if loss == "ce" and multi_label:
            raise ValueError("loss='ce' is for multi-class data; use 'focal' or 'bce' here")
        task = "multilabel" if multi_label else "multiclass"
        check_choice("monitor", monitor,
                     ["val/loss", *(f"val/{name}" for name in METRIC_NAMES[task])])  # fmt: skip
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(
                f"class_weights has {len(class_weights)} entries for {num_classes} classes"
            )
        self.optimizer_cfg = {**FINETUNE_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**FINETUNE_SCHEDULER, **(scheduler or {})}
        if source is None:
            source = read_arm_source(arm, init, weights, timm_name, img_size, in_chans)
        elif (source.arm, source.init, source.weights) != (arm, init, weights):
            raise ValueError(f"source describes {source.arm}/{source.init}/{source.weights}, "
                             f"not {arm}/{init}/{weights}")  # fmt: skip
        self.source = source
        self.backbone = build_backbone(source, num_classes)
        bad = non_finite_tensors(self.backbone)
        if bad:
            raise ValueError(
                f"the {init} weights {source.weights or source.timm_name} hold non-finite values "
                f"(NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}; fine-tuning them would "
                "train on a non-finite loss"
            )
        self.hparams["timm_name"], self.hparams["img_size"] = source.timm_name, source.img_size
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float)
        self.register_buffer("class_weight", weight, persistent=False)
        if mode == "linear":
            self.backbone.requires_grad_(False)
            self.head.requires_grad_(True)
        # Updated every training step: no per-batch checks that read values back to the host.
        self.train_metrics = build_metrics(multi_label, num_classes, validate=False)
        self.val_metrics = build_metrics(multi_label, num_classes)
        self.test_metrics = build_metrics(multi_label, num_classes)
        self.test_per_class = PerClassBreakdown(multi_label, num_classes)
        self.test_breakdown: dict[str, Any] | None = None
        self.finite = FiniteLossGuard(
            "fine-tuning",
            "Lower model.optimizer.lr, check that the starting weights are finite, or use "
            "32-true precision",
            kept="no results were written",
        )
        self.train()  # Lightning keeps the modes it finds: a linear probe starts frozen-eval

    @property
    def head(self) -> nn.Module:
        """The new linear classifier (timm's ``get_classifier``)."""
        return self.backbone.get_classifier()

    @property
    def monitor_mode(self) -> str:
        return "min" if self.hparams.monitor.endswith("/loss") else "max"

    def train(self, mode: bool = True) -> ClassifierModule:
        """Linear probing keeps the frozen backbone in eval mode (BatchNorm statistics fixed)."""
        super().train(mode)
        if mode and self.hparams.mode == "linear":
            self.backbone.eval()
            self.head.train()
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(images)

    # ------------------------------------------------------------------ loss
    def dense_targets(self, targets: Tensor, num_classes: int) -> Tensor:
        """Float one-hot (multi-class) or multi-hot (multi-label) targets."""
        if self.hparams.multi_label:
            return targets.float()
        return F.one_hot(targets.long(), num_classes).float()

    def compute_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        hp = self.hparams
        if hp.loss == "ce":
            return F.cross_entropy(logits.float(), targets.long(), weight=self.class_weight)
        dense = self.dense_targets(targets, logits.shape[-1])
        if hp.loss == "focal":
            return sigmoid_focal_loss(
                logits, dense, hp.focal_alpha, hp.focal_gamma, weight=self.class_weight
            )
        return F.binary_cross_entropy_with_logits(logits.float(), dense, weight=self.class_weight)

    # -------------------------------------------------------------- training
    def _step(self, batch: Any, stage: str) -> Tensor:
        images, targets = images_and_targets(batch)
        logits = self(images)
        loss = self.compute_loss(logits, targets)
        on_step = stage == "train"
        if on_step:  # on the device: read at the logging interval (GuardsFiniteLoss)
            self.finite.record(loss, self.global_step)
        # Not in Lightning's progress bar while training: it reads those back every batch.
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=not on_step,
                 batch_size=images.shape[0])  # fmt: skip
        getattr(self, f"{stage}_metrics").update(logits, targets)
        if stage == "test":
            self.test_per_class.update(logits, targets)
        return loss

    def _log_metrics(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = {f"{stage}/{k}": v for k, v in metrics.compute().items()}
        if values:
            self.log_dict(values, prog_bar=stage == "val")
        metrics.reset()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if logs_this_step(self.trainer):  # Python numbers: a copy to the device each
            self.log_dict(group_learning_rates(self.trainer.optimizers[0]), on_step=True,
                          on_epoch=False)  # fmt: skip
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Re-apply the linear probe's eval backbone, whatever mode a caller set."""
        self.train()

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")
        super().on_train_epoch_end()  # reads the non-finite guard

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.test_breakdown = self.test_per_class.compute()
        self.test_per_class.reset()

    # ------------------------------------------------------------- results
    def per_class_results(self, classes: Sequence[str], label_seed: int | None) -> dict[str, Any]:
        """What ``results.json`` records of the last test pass beside the averaged metrics:
        ``classes`` (names), ``per_class`` (``{"f1", "support"}``), ``confusion`` (rows true,
        columns predicted; ``None`` for multi-label data), the labelled subset's
        ``label_seed`` and over which classes ``f1_macro`` was averaged
        (``f1_macro_classes``, ``f1_macro_left_out``, ``f1_macro_over``; see
        ``metrics.f1_macro_scope``)."""
        if len(classes) != self.hparams.num_classes:
            raise ValueError(
                f"{len(classes)} class names for a {self.hparams.num_classes}-class model"
            )
        found = self.test_breakdown or {}
        return {
            "classes": [str(c) for c in classes],
            "per_class": found.get("per_class"),
            "confusion": found.get("confusion"),
            "label_seed": label_seed,
            **f1_macro_scope(found.get("per_class"), classes, bool(self.hparams.multi_label)),
        }

    # ---------------------------------------------------------------- export
    def export_record(self) -> dict[str, Any]:
        """What an export of this classifier needs beyond its hyperparameters, kept in every
        checkpoint: the class names in head order and the preprocessing (from the attached
        datamodule's ``classes``, ``mean``, ``std``), the method the backbone came from and
        what it was initialised from."""
        loaded = getattr(self, "_export_record", None)
        if loaded is not None:
            return dict(loaded)
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        try:
            classes = getattr(datamodule, "classes", None)
        except RuntimeError:  # a datamodule not set up yet
            classes = None
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        return {
            "classes": None if classes is None else [str(c) for c in classes],
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std],
            "method": self.source.method,
            "weights_init": {
                "init": self.hparams.init,
                "weights": self.hparams.weights,
                "record": record_of(self.backbone),
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[EXPORT_RECORD_KEY] = self.export_record()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get(EXPORT_RECORD_KEY)
        if isinstance(record, dict):
            self._export_record = dict(record)

    # ------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        cfg = self.optimizer_cfg
        groups = arm_param_groups(
            self.hparams.arm, [self.backbone], float(cfg["lr"]), float(cfg["weight_decay"])
        )
        return lightning_optimizers(groups, cfg, self.scheduler_cfg, self.trainer)
