"""LightningModules: the pretraining methods (see :mod:`.registry`) and fine-tuning / probing.

The names below are imported on first use (PEP 562), so reading the method registry
(``cass_lightning.modules.registry``, used by the study's planner and the report) does not load
torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, str]] = {
    "BYOLModule": ("cass_lightning.modules.byol", "BYOLModule"),
    "CASSModule": ("cass_lightning.modules.cass", "CASSModule"),
    "ClassifierModule": ("cass_lightning.modules.classifier", "ClassifierModule"),
    "DINOModule": ("cass_lightning.modules.dino", "DINOModule"),
    "PretrainingModule": ("cass_lightning.modules.base", "PretrainingModule"),
    "SimCLRModule": ("cass_lightning.modules.simclr", "SimCLRModule"),
    "SimSiamModule": ("cass_lightning.modules.simsiam", "SimSiamModule"),
}

__all__ = [
    "BYOLModule",
    "CASSModule",
    "ClassifierModule",
    "DINOModule",
    "PretrainingModule",
    "SimCLRModule",
    "SimSiamModule",
    "pretraining_module_for",
]


def pretraining_module_for(hparams: dict[str, Any]) -> type:
    """The module class that wrote a pretraining checkpoint: the method its hyperparameters
    record (checkpoints from before that was recorded: see ``registry.recorded_method``)."""
    from cass_lightning.modules.registry import get_method, recorded_method

    if "num_classes" in hparams or not ("cnn" in hparams and "vit" in hparams):
        raise ValueError(
            "not a pretraining checkpoint (its hyperparameters are "
            f"{sorted(hparams)[:8]}...); fine-tuning checkpoints hold no arms to export"
        )
    return get_method(recorded_method(hparams)).module_class()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cass_lightning.modules' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from cass_lightning.modules.base import PretrainingModule
    from cass_lightning.modules.byol import BYOLModule
    from cass_lightning.modules.cass import CASSModule
    from cass_lightning.modules.classifier import ClassifierModule
    from cass_lightning.modules.dino import DINOModule
    from cass_lightning.modules.simclr import SimCLRModule
    from cass_lightning.modules.simsiam import SimSiamModule
