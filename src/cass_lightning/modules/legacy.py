"""Loading checkpoints written before the constructors were regrouped (cass-lightning <= 0.1.0).

Older ``CASSModule`` checkpoints stored the per-arm learning rates, the remedies and ``lr_scale``
as separate hyperparameters; older ``DINOModule`` checkpoints stored ``weights_file``,
``backbone_kwargs``, ``lr_scale`` and the head and distillation settings flat. Lightning passes
only the constructor's own names on, so without this step those settings would be dropped
without a word. :class:`UpgradesOldCheckpoints` reads the stored hyperparameters (memory-mapped:
the weights are not read twice), maps them to today's arguments and hands them to Lightning's
``load_from_checkpoint`` as overrides.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

#: Old CASS hyperparameters that are now keys of the ``optimizer`` dict.
_CASS_OPTIMIZER_KEYS = ("cnn_lr", "vit_lr", "cnn_weight_decay", "vit_weight_decay")
#: Old CASS hyperparameters that are now keys of the ``remedies`` dict.
_CASS_REMEDY_KEYS = (
    "layer_decay", "cnn_freeze_stages", "vit_freeze_stages", "ema_momentum", "ema_momentum_end",
    "variance_weight", "covariance_weight", "variance_target", "predictor",
    "predictor_hidden_dim", "two_views",
)  # fmt: skip
#: Old DINO flat names -> (dict argument, key).
_DINO_GROUPED = {
    "head_dim": ("head", "dim"),
    "head_hidden_dim": ("head", "hidden_dim"),
    "head_bottleneck_dim": ("head", "bottleneck_dim"),
    "head_batch_norm": ("head", "batch_norm"),
    "norm_last_layer": ("head", "norm_last_layer"),
    "freeze_last_layer_epochs": ("head", "freeze_last_layer_epochs"),
    "teacher_temp": ("distillation", "teacher_temp"),
    "warmup_teacher_temp": ("distillation", "warmup_teacher_temp"),
    "warmup_teacher_temp_epochs": ("distillation", "warmup_teacher_temp_epochs"),
    "student_temp": ("distillation", "student_temp"),
    "center_momentum": ("distillation", "center_momentum"),
    "momentum_start": ("distillation", "momentum_start"),
    "momentum_end": ("distillation", "momentum_end"),
}


#: Stored names that are no constructor argument any more (the upgrade reads them).
LEGACY_KEYS = frozenset({
    *_CASS_OPTIMIZER_KEYS, *_CASS_REMEDY_KEYS, *_DINO_GROUPED, "lr_scale",
    "zero_grad_every_step", "channels_last", "compile", "weights_file", "backbone_kwargs",
})  # fmt: skip
#: True while ``load_from_checkpoint`` builds a module from stored hyperparameters.
_LOADING: ContextVar[bool] = ContextVar("cass_loading_checkpoint", default=False)


def check_stored_extras(owner: str, method: str, extras: Mapping[str, Any]) -> None:
    """Refuse constructor arguments a method does not take, except what checkpoints store
    beside them: the recorded ``method`` (it must be this one) and, while loading, the old
    names :class:`UpgradesOldCheckpoints` has already mapped (other stored names: a warning)."""
    recorded = extras.get("method")
    if recorded is not None and str(recorded).lower() != method:
        raise ValueError(
            f"this checkpoint records method {recorded!r}, not {method!r}: load it with that "
            "method's module (cass_lightning.modules.pretraining_module_for(hparams))"
        )
    loading = _LOADING.get()
    unknown = sorted(set(extras) - {"method"} - (LEGACY_KEYS if loading else set()))
    if unknown and not loading:
        raise TypeError(f"{owner}() got unexpected argument(s) {unknown}")
    if unknown:
        warnings.warn(
            f"stored hyperparameter(s) {unknown} are no argument of {owner}: ignored", stacklevel=3
        )


def stored_hparams(checkpoint_path: Any) -> dict[str, Any]:
    """The ``hyper_parameters`` of a checkpoint file (``{}`` for file objects or none stored)."""
    if not isinstance(checkpoint_path, (str, Path)):
        return {}
    state = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=True)
    return dict(state.get("hyper_parameters") or {})


def upgrade_cass_hparams(hp: dict[str, Any], accumulates_gradients: bool) -> dict[str, Any]:
    """Today's ``CASSModule`` arguments for an old checkpoint's hyperparameters (``{}`` when the
    checkpoint is already current)."""
    if "remedies" in hp or not any(k in hp for k in (*_CASS_REMEDY_KEYS, "lr_scale")):
        return {}
    optimizer = dict(hp.get("optimizer") or {})
    for key in _CASS_OPTIMIZER_KEYS:
        if hp.get(key) is not None:
            optimizer[key] = hp[key]
    new: dict[str, Any] = {
        "optimizer": optimizer,
        "remedies": {k: hp[k] for k in _CASS_REMEDY_KEYS if k in hp},
        "batch_lr_factor": float(hp.get("lr_scale", 1.0)),
    }
    if hp.get("zero_grad_every_step") is False and not accumulates_gradients:
        raise ValueError(
            "this checkpoint was trained with zero_grad_every_step=False (the reference "
            "notebook's gradient accumulation); load it with "
            "cass_lightning.modules.ablation.AccumulatingCASSModule"
        )
    switched = [k for k in ("channels_last", "compile") if hp.get(k)]
    if switched:
        warnings.warn(
            f"checkpoint made with {', '.join(switched)}=True: these are speed switches applied "
            "at launch now (speed.channels_last / speed.compile), not part of the model",
            stacklevel=3,
        )
    return new


def upgrade_dino_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    """Today's ``DINOModule`` arguments for an old checkpoint's hyperparameters."""
    if "distillation" in hp or "arm" not in hp:
        return {}
    arm = hp["arm"]
    new: dict[str, Any] = {"batch_lr_factor": float(hp.get("lr_scale", 1.0))}
    if hp.get("weights_file") is not None:
        new[f"{arm}_weights_file"] = hp["weights_file"]
    if hp.get("backbone_kwargs"):
        new[f"{arm}_kwargs"] = dict(hp["backbone_kwargs"])
    for old, (group, key) in _DINO_GROUPED.items():
        if old in hp:
            new.setdefault(group, {})[key] = hp[old]
    return new


class UpgradesOldCheckpoints:
    """Mixin for a LightningModule: ``load_from_checkpoint`` also reads checkpoints written with
    older constructor arguments (see the module docstring). Subclasses set ``_upgrade``."""

    @classmethod
    def _upgrade(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {}

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
        upgraded = cls._upgrade(stored_hparams(checkpoint_path))
        token = _LOADING.set(True)
        try:
            return super().load_from_checkpoint(  # type: ignore[misc]
                checkpoint_path, *args, **{**upgraded, **kwargs}
            )
        finally:
            _LOADING.reset(token)
