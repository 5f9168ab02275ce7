"""PretrainingModule: what every self-supervised method here shares (solo-learn's ``BaseMethod``
as a model, with plain constructor arguments instead of a config object).

A method is its idea only: its heads, its loss and its training step. The base owns the rest:

- the encoder settings (``cnn``, ``vit``, ``img_size``, ``in_chans``, ``pretrained``,
  ``<arm>_weights_file``, ``<arm>_kwargs``), taken once here for every method, checked and built
  by :class:`~.encoder_settings.EncoderSettings` (:meth:`build_arm`); ``mean``/``std``; the
  optimiser and schedule settings merged over the method's defaults; the learning-rate factor
  of the apps' scaling rule (:meth:`learning_rate`); the hyperparameters and the method's name
  in them; old checkpoints (:class:`~.legacy.UpgradesOldCheckpoints`);
- the training step around the method's loss (:meth:`training_step`): the views the method
  declared, the non-finite guard (:class:`~.finite.GuardsFiniteLoss`), the loss and each
  trained arm's collapse reading ``train/<arm>_std`` (the std of its l2-normalised outputs,
  which :class:`~cass_lightning.callbacks.CollapseMonitor` watches), the learning rates and
  schedules at Lightning's logging steps;
- the online probe's features: each student backbone's pooled features of the first forward
  pass of each batch (the first view's, in a two-view method), and a validation step that runs
  the trained backbones;
- one momentum (EMA) mechanism (:meth:`use_ema`, :meth:`momentum_pairs`), moved after every
  optimiser step along one cosine schedule (:meth:`along_run`);
- the export (:meth:`exportable`, :meth:`export`) and the optimiser wiring.

A method declares what is abstract here; :class:`~.one_arm.OneArmMethod` does the rest for a
method that trains one of the two encoders (``arm``). ``docs/extending.md`` walks through one.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from cass_lightning.batches import batch_images, multicrop_views, same_size_views
from cass_lightning.checks import check_choice, check_positive
from cass_lightning.evaluation import KeepPooled
from cass_lightning.export import ExportedArm, export_backbones
from cass_lightning.losses import normalized_std
from cass_lightning.modules.ema import follow
from cass_lightning.modules.encoder_settings import EncoderSettings, check_momentum
from cass_lightning.modules.finite import FiniteLossGuard, GuardsFiniteLoss, logs_this_step
from cass_lightning.modules.legacy import UpgradesOldCheckpoints, check_stored_extras
from cass_lightning.modules.optim import (
    group_learning_rates,
    lightning_optimizers,
)
from cass_lightning.norms import IMAGENET_MEAN, IMAGENET_STD

#: The paper's optimiser and schedule (Adam, lr 1e-3, no weight decay; the cyclic cosine stepped
#: every iteration), every method's default, so a comparison with CASS changes only the method.
PAPER_OPTIMIZER: dict[str, Any] = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
PAPER_SCHEDULER: dict[str, Any] = {"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6}


class PretrainingModule(
    GuardsFiniteLoss, UpgradesOldCheckpoints, L.LightningModule, metaclass=ABCMeta
):
    """Base of the pretraining methods; see the module docstring.

    Args:
        cnn, vit: timm model names of the two arms.
        img_size: input size (ViTs are built for it; CNNs are size-agnostic).
        in_chans: input channels of both arms.
        pretrained: load ImageNet weights (from ``*_weights_file`` offline, else the hub).
        cnn_weights_file, vit_weights_file: ``.safetensors``/``.pth`` weights per arm.
        cnn_kwargs, vit_kwargs: extra keyword arguments for ``timm.create_model`` per arm.
        optimizer, scheduler: merged over the method's :attr:`default_optimizer` /
            :attr:`default_scheduler`; see ``optim.build_optimizer`` / ``build_scheduler``.
        mean, std: the normalisation the data used, recorded for export.
        batch_lr_factor: multiplies every learning rate; the apps set it from the lr scaling
            rule for the effective batch.
        stored: only what checkpoints store beside the arguments (see
            :func:`~.legacy.check_stored_extras`); anything else is refused.
    """

    #: The registry name (``cass``, ``dino``, ...), written into checkpoints and exports.
    method: ClassVar[str] = ""
    #: The name in messages and the run summary.
    method_name: ClassVar[str] = ""
    default_optimizer: ClassVar[dict[str, Any]] = PAPER_OPTIMIZER
    default_scheduler: ClassVar[dict[str, Any]] = PAPER_SCHEDULER
    #: What the non-finite loss message advises.
    finite_advice: ClassVar[str] = (
        "Lower the learning rate, use 32-true precision or gradient clipping"
    )
    #: The networks :meth:`exportable` can write, the trained one first.
    export_networks: ClassVar[tuple[str, ...]] = ("online",)
    #: Whether a momentum target also copies its online module's buffers (BatchNorm statistics).
    ema_copies_buffers: ClassVar[bool] = False

    encoders: EncoderSettings
    optimizer_cfg: dict[str, Any]
    scheduler_cfg: dict[str, Any]
    finite: FiniteLossGuard
    #: Each student backbone's pooled features of the first forward pass of the current batch.
    pooled: dict[str, Tensor]
    #: The width of each trained arm's outputs (read by the collapse monitor).
    output_widths: dict[str, int]
    #: The momentum schedule ``(start, end)`` of the targets; ``None``: no momentum targets.
    ema_range: tuple[float, float] | None

    def __init__(
        self,
        cnn: str = "resnet50",
        vit: str = "vit_base_patch16_384",
        img_size: int = 384,
        in_chans: int = 3,
        pretrained: bool = False,
        cnn_weights_file: str | None = None,
        vit_weights_file: str | None = None,
        cnn_kwargs: dict[str, Any] | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_lr_factor: float = 1.0,
        **stored: Any,
    ) -> None:
        super().__init__()
        check_stored_extras(type(self).__name__, self.method, stored)
        # Collects the subclasses' arguments too (Lightning walks the __init__ frames).
        self.save_hyperparameters(ignore=list(stored))
        self.hparams["method"] = self.method
        self.encoders = EncoderSettings.from_hparams(self.hparams)
        self.optimizer_cfg = {**self.default_optimizer, **(optimizer or {})}
        self.scheduler_cfg = {**self.default_scheduler, **(scheduler or {})}
        self.learning_rate()  # refuse a non-positive lr or factor before anything is built
        self.finite = FiniteLossGuard(self.method_name, self.finite_advice)
        self.pooled, self.output_widths, self.ema_range = {}, {}, None

    # ------------------------------------------------------------------ encoders
    def build_arm(
        self, arm: str, student: bool = True, **extra: Any
    ) -> tuple[nn.Module, nn.Module]:
        """``(timm backbone, head)`` of ``arm`` from the shared settings (``extra``: see
        :meth:`~.encoder_settings.EncoderSettings.build`). A student's pooled features feed
        the online probe; ``student=False`` builds a copy without weights or probe features."""
        backbone, head = self.encoders.build(arm, student=student, **extra)
        if student:
            backbone.get_classifier().register_forward_hook(KeepPooled(self.pooled, arm))
        return backbone, head

    # ------------------------------------------------------------------ protocol
    @abstractmethod
    def trained_arms(self) -> tuple[str, ...]:
        """The arms this module trains and exports."""

    @abstractmethod
    def arm_backbone(self, arm: str) -> nn.Module:
        """The plain timm model of ``arm`` (the one exported)."""

    def pooled_features(self, arm: str) -> Tensor | None:
        """``arm``'s pooled features of the images of the current batch (its first training
        view, or the validation images), detached; ``None`` before the first."""
        return self.pooled.get(arm)

    def data_views(self) -> str:
        """What the training data must give: ``paper`` (one view), ``pair`` (two views of each
        image) or ``dino`` (multi-crop); see ``data.train_views``."""
        return "paper"

    def data_inputs(self) -> dict[str, Any]:
        """What each training image must be for this model: its side (``img_size``) and the
        normalisation it was built and will be exported with (``mean``, ``std``). The app
        gives these to the datamodule, so data and model cannot disagree."""
        hp = self.hparams
        return {"img_size": int(hp.img_size), "mean": list(hp.mean), "std": list(hp.std)}

    def best_monitor(self) -> str | None:
        """The reading the "best" checkpoint follows (mode max) when the online evaluation runs:
        the online probe's validation accuracy on the first trained arm. ``None``: none (only
        ``last.ckpt`` is kept; a self-supervised loss is no quality measure)."""
        return f"probe/{self.trained_arms()[0]}_val_acc"

    def has_idle_parameters(self) -> bool:
        """Whether some parameters get no gradient in a step (DDP then needs
        ``find_unused_parameters``)."""
        return False

    # ------------------------------------------------------------------ training
    @abstractmethod
    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The method's loss on one batch's views, and each trained arm's outputs on the first
        view (the collapse reading and the non-finite guard read them)."""

    def training_views(self, batch: Any) -> list[Tensor]:
        """The batch's views, exactly as many as :meth:`data_views` declares (the app composes
        the data from that declaration; a hand-built loader may not)."""
        kind = self.data_views()
        if kind == "dino":
            return multicrop_views(batch)
        views, wanted = same_size_views(batch), 2 if kind == "pair" else 1
        if len(views) != wanted:
            form = "([view_1, view_2], labels)" if wanted == 2 else "(images, labels)"
            raise ValueError(
                f"{self.method_name} trains on {'two views' if wanted == 2 else 'one view'} of "
                f"each image, got {len(views)}; set data.train_views={kind} (cass-pretrain asks "
                f"the model for it) or give {form}"
            )
        return views

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = self.training_views(batch)
        loss, outputs = self.training_loss(views)
        self.finite.record(loss, self.global_step, outputs)  # read at the logging interval
        self.output_widths = {arm: int(z.shape[-1]) for arm, z in outputs.items()}
        size = views[0].shape[0]
        # Not in Lightning's progress bar: it reads those back every batch.
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=size)
        self.log_dict({f"train/{arm}_std": normalized_std(z) for arm, z in outputs.items()},
                      on_step=True, on_epoch=True, batch_size=size)  # fmt: skip
        self.log_schedules()
        return loss

    def validation_loss(self, images: Tensor) -> Tensor | None:
        """A method's agreement reading on the one evaluation view (``val/loss``); by default
        none, but every trained backbone runs, so the online probe scores today's features."""
        for arm in self.trained_arms():
            self.arm_backbone(arm)(images)
        return None

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        images = batch_images(batch)
        loss = self.validation_loss(images)
        if loss is not None:
            self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.pooled.clear()  # the batch's first forward pass fills it again

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.pooled.clear()

    def schedule_readings(self) -> dict[str, float]:
        """A method's own per-step schedules to log (Python numbers), e.g. DINO's decay."""
        return {}

    def log_schedules(self) -> None:
        """The learning rates, the targets' momentum and :meth:`schedule_readings`, at
        Lightning's logging steps only (Python numbers: each one is a copy to the device)."""
        if self._trainer is None or not logs_this_step(self.trainer):
            return
        readings = group_learning_rates(self.trainer.optimizers[0])
        if self.ema_range is not None:
            readings["train/ema_momentum"] = self.ema_momentum_now()
        self.log_dict({**readings, **self.schedule_readings()}, on_step=True, on_epoch=False)

    # ------------------------------------------------------------- momentum targets
    def use_ema(self, name: str, start: float, end: float) -> None:
        """Move :meth:`momentum_pairs`' targets after every optimiser step, the momentum rising
        from ``start`` to ``end`` along :meth:`along_run` (``name``: the setting, for errors)."""
        self.ema_range = check_momentum(name, start, end)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` modules; each target follows its online module."""
        return []

    def ema_momentum_now(self) -> float:
        """The targets' momentum at this step (the start value without a trainer)."""
        return self.along_run(*self.ema_range) if self.ema_range is not None else 0.0

    def update_ema(self, momentum: float) -> None:
        """Move every target towards its online module by ``momentum``."""
        for online, target in self.momentum_pairs():
            follow(online, target, momentum, buffers=self.ema_copies_buffers)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """The optimiser step, then the targets' update: once per optimiser step, also under
        gradient accumulation, at the step's index in the run (DINO's reference)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema_range is not None:
            self.update_ema(self.ema_momentum_now())

    def along_run(self, start: float, end: float) -> float:
        """``start`` -> ``end`` along a cosine over the run's optimiser steps (lightly's
        ``cosine_schedule``), at the current step; an open-ended run keeps ``start``."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if not math.isfinite(total) or total < 2:
            return float(start)
        step = min(self.global_step, int(total))
        return float(cosine_schedule(step, int(total), float(start), float(end)))

    # -------------------------------------------------------------------- export
    def specs(self) -> dict[str, Any]:
        """How to rebuild each trained arm's backbone with plain timm."""
        return {arm: self.encoders.spec(arm, self.arm_backbone(arm)) for arm in self.trained_arms()}

    def network_backbone(self, arm: str, network: str) -> nn.Module:
        """``arm``'s backbone in ``network`` (one of :attr:`export_networks`)."""
        return self.arm_backbone(arm)

    def export_arms(self, network: str) -> dict[str, ExportedArm]:
        """The exported arms: each backbone, with its head when the method exports one."""
        specs = self.specs()
        return {arm: ExportedArm(specs[arm], self.network_backbone(arm, network)) for arm in specs}

    def export_meta(self) -> dict[str, Any]:
        """What ``meta.json`` says beyond the method (head, size, normalisation)."""
        hp, first = self.hparams, next(iter(self.specs().values()))
        return {"head": "features", "head_dim": first.num_features, "img_size": hp.img_size,
                "mean": list(hp.mean), "std": list(hp.std)}  # fmt: skip

    def exportable(
        self, network: str | None = None
    ) -> tuple[dict[str, ExportedArm], dict[str, Any]]:
        """The arms of ``network`` (default: the trained one) and ``meta.json``'s content,
        which always names the method (and the network, where there is a choice)."""
        network = check_choice("network", network or self.export_networks[0], self.export_networks)
        meta = {"method": self.method, **self.export_meta()}
        if len(self.export_networks) > 1:
            meta["network"] = network
        return self.export_arms(network), meta

    def export(
        self, out_dir: str | Path, source: str | None = None, network: str | None = None
    ) -> Path:
        """Write ``<arm>.safetensors`` and ``meta.json`` (see :mod:`cass_lightning.export`)."""
        arms, meta = self.exportable(network)
        return export_backbones(arms, out_dir, meta, source=source)

    # ----------------------------------------------------------------- optimiser
    def learning_rate(self) -> float:
        """``optimizer.lr`` times ``batch_lr_factor`` (both must be > 0)."""
        lr = check_positive("model.optimizer.lr", self.optimizer_cfg["lr"])
        return lr * check_positive("batch_lr_factor", self.hparams.batch_lr_factor)

    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (see ``optim.arm_param_groups``)."""

    def configure_optimizers(self) -> Any:
        return lightning_optimizers(
            self.param_groups(), self.optimizer_cfg, self.scheduler_cfg, self.trainer
        )
