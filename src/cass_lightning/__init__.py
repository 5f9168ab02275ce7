"""cass-lightning: CASS (Cross Architectural Self-Supervision) on Lightning, timm and Hydra.

The names below are imported on first use (PEP 562), so importing a light part of the package
(the report, the study's planner) does not load torch, Lightning and timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> (module, attribute).
_EXPORTS: dict[str, tuple[str, str]] = {
    "CASSLoss": ("cass_lightning.losses", "CASSLoss"),
    "CASSModule": ("cass_lightning.modules.cass", "CASSModule"),
    "ClassifierModule": ("cass_lightning.modules.classifier", "ClassifierModule"),
    "DINOModule": ("cass_lightning.modules.dino", "DINOModule"),
    "ImageFolderDataModule": ("cass_lightning.data", "ImageFolderDataModule"),
    "MedMNISTDataModule": ("cass_lightning.data", "MedMNISTDataModule"),
    "MedicalDataModule": ("cass_lightning.data", "MedicalDataModule"),
    "SyntheticDataModule": ("cass_lightning.data", "SyntheticDataModule"),
    "__version__": ("cass_lightning.export", "PACKAGE_VERSION"),
    "cass_loss": ("cass_lightning.losses", "cass_loss"),
    "sigmoid_focal_loss": ("cass_lightning.losses", "sigmoid_focal_loss"),
}

__all__ = [
    "CASSLoss",
    "CASSModule",
    "ClassifierModule",
    "DINOModule",
    "ImageFolderDataModule",
    "MedMNISTDataModule",
    "MedicalDataModule",
    "SyntheticDataModule",
    "__version__",
    "cass_loss",
    "sigmoid_focal_loss",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cass_lightning' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:
    from cass_lightning.data import (
        ImageFolderDataModule,
        MedicalDataModule,
        MedMNISTDataModule,
        SyntheticDataModule,
    )
    from cass_lightning.export import PACKAGE_VERSION as __version__
    from cass_lightning.losses import CASSLoss, cass_loss, sigmoid_focal_loss
    from cass_lightning.modules.cass import CASSModule
    from cass_lightning.modules.classifier import ClassifierModule
    from cass_lightning.modules.dino import DINOModule
