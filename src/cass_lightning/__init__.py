"""cass-lightning: CASS (Cross Architectural Self-Supervision) on Lightning, timm and Hydra."""

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
