"""PretrainingModule: what every self-supervised method here shares (solo-learn's ``BaseMethod``
as a model, with plain constructor arguments instead of a config object).

A method subclasses it, builds its networks from :meth:`PretrainingModule.build_arm` and
implements ``training_step`` and :meth:`exportable`'s arms. The base owns:

- the encoders: each arm's timm model built from the same settings for every method (``cnn``,
  ``vit``, ``img_size``, ``in_chans``, ``pretrained``, ``<arm>_weights_file``, ``<arm>_kwargs``:
  the constructor arguments every method takes, so one config drives them all and old
  checkpoints' hyperparameters load as they are);
- the non-finite loss guard (:class:`~.finite.GuardsFiniteLoss`) and the legacy upgrade of old
  checkpoints (:class:`~.legacy.UpgradesOldCheckpoints`);
- the method's name, recorded in the checkpoint's hyperparameters and in every export's
  ``meta.json`` (see :mod:`.registry`);
- the export (:meth:`specs`, :meth:`exportable`, :meth:`export`), the optimiser and schedule
  wiring and the learning-rate logging;
- the protocol the callbacks use instead of looking for attributes: :meth:`trained_arms`,
  :meth:`pooled_features`, :meth:`arm_backbone`, :meth:`data_views`,
  :meth:`has_idle_parameters` and :meth:`best_monitor`.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from cass_lightning.encoders import build_encoder, encoder_spec
from cass_lightning.evaluation import KeepPooled
from cass_lightning.export import ExportedArm, export_backbones
from cass_lightning.modules.finite import GuardsFiniteLoss, logs_this_step
from cass_lightning.modules.legacy import UpgradesOldCheckpoints
from cass_lightning.modules.optim import group_learning_rates, lightning_optimizers


class PretrainingModule(
    GuardsFiniteLoss, UpgradesOldCheckpoints, L.LightningModule, metaclass=ABCMeta
):
    """Base of the pretraining methods; see the module docstring.

    Subclasses set :attr:`method` (their registry name) and :attr:`method_name` (for messages),
    call ``save_hyperparameters()`` in their constructor and then :meth:`record_method`.
    """

    #: The registry name (``cass``, ``dino``, ...), written into checkpoints and exports.
    method: ClassVar[str] = ""
    #: The name in messages and the run summary.
    method_name: ClassVar[str] = ""

    def record_method(self) -> None:
        """Put the method's name into the hyperparameters (checkpoints, ``hparams.yaml``).

        Lightning passes only the constructor's own arguments back when loading, so the extra
        key never reaches ``__init__``."""
        self.hparams["method"] = self.method

    # ------------------------------------------------------------------ encoders
    def build_arm(
        self, arm: str, student: bool = True, **extra: Any
    ) -> tuple[nn.Module, nn.Module]:
        """``(timm backbone, head)`` of ``arm`` from the shared encoder settings.

        ``student=False`` builds a copy that gets no ImageNet weights of its own (an EMA
        target is copied from the student). ``extra`` goes to :func:`~.encoders.build_encoder`
        (``head``, ``head_dim``, ...; default: pooled features, no head).
        """
        hp = self.hparams
        kwargs: dict[str, Any] = {"head": "features", **extra}
        if arm == "vit":
            kwargs.setdefault("img_size", hp.img_size)
        kwargs.update(hp.get(f"{arm}_kwargs") or {})
        return build_encoder(
            hp[arm],
            pretrained=bool(hp.pretrained) and student,
            weights_file=hp.get(f"{arm}_weights_file") if student else None,
            in_chans=hp.in_chans,
            **kwargs,
        )

    def keep_pooled(self, arm: str, backbone: nn.Module) -> None:
        """Keep ``backbone``'s pooled features of its last forward pass (detached) for
        :meth:`pooled_features`: a hook on the classifier's input, no second pass."""
        if not hasattr(self, "pooled"):
            self.pooled: dict[str, Tensor] = {}
        backbone.get_classifier().register_forward_hook(KeepPooled(self.pooled, arm))

    # ------------------------------------------------------------------ protocol
    @abstractmethod
    def trained_arms(self) -> tuple[str, ...]:
        """The arms this module trains and exports."""

    @abstractmethod
    def arm_backbone(self, arm: str) -> nn.Module:
        """The plain timm model of ``arm`` (the one exported)."""

    def pooled_features(self, arm: str) -> Tensor | None:
        """``arm``'s pooled features of the images of the current batch (the last training or
        validation forward pass), detached; ``None`` before the first."""
        return getattr(self, "pooled", {}).get(arm)

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

    # -------------------------------------------------------------------- export
    def specs(self) -> dict[str, Any]:
        """How to rebuild each trained arm's backbone with plain timm."""
        hp = self.hparams
        return {
            arm: encoder_spec(hp[arm], self.arm_backbone(arm),
                              hp.img_size if arm == "vit" else None, hp.in_chans)
            for arm in self.trained_arms()
        }  # fmt: skip

    def export_arms(self) -> dict[str, ExportedArm]:
        """The exported arms: each backbone, with its head when the method has one."""
        specs = self.specs()
        return {arm: ExportedArm(specs[arm], self.arm_backbone(arm)) for arm in specs}

    def export_meta(self) -> dict[str, Any]:
        """What ``meta.json`` says beyond the method (head, size, normalisation)."""
        hp, specs = self.hparams, self.specs()
        first = next(iter(specs.values()))
        return {"head": "features", "head_dim": first.num_features, "img_size": hp.img_size,
                "mean": list(hp.mean), "std": list(hp.std)}  # fmt: skip

    def exportable(self) -> tuple[dict[str, ExportedArm], dict[str, Any]]:
        """The arms to export and ``meta.json``'s content, which always names the method."""
        return self.export_arms(), {"method": self.method, **self.export_meta()}

    def export(self, out_dir: str | Path, source: str | None = None) -> Path:
        """Write ``<arm>.safetensors`` and ``meta.json`` (see :mod:`cass_lightning.export`)."""
        arms, meta = self.exportable()
        return export_backbones(arms, out_dir, meta, source=source)

    def along_run(self, start: float, end: float) -> float:
        """``start`` -> ``end`` along a cosine over the run's optimiser steps (lightly's
        ``cosine_schedule``), at the current step; an open-ended run keeps ``start``."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if not math.isfinite(total) or total < 2:
            return float(start)
        step = min(self.global_step, int(total))
        return float(cosine_schedule(step, int(total), float(start), float(end)))

    # ----------------------------------------------------------------- optimiser
    @abstractmethod
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (see ``optim.arm_param_groups``)."""

    def configure_optimizers(self) -> Any:
        return lightning_optimizers(
            self.param_groups(), self.optimizer_cfg, self.scheduler_cfg, self.trainer
        )

    def log_learning_rates(self) -> None:
        """Each group's learning rate, at Lightning's logging steps only (Python numbers: each
        one is a copy to the device)."""
        if self._trainer is not None and logs_this_step(self.trainer):
            self.log_dict(group_learning_rates(self.trainer.optimizers[0]), on_step=True,
                          on_epoch=False)  # fmt: skip
