"""LightningModules: CASS pretraining, the DINO baseline, and fine-tuning / linear probing."""

from typing import Any

from cass_lightning.modules.cass import CASSModule
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.modules.dino import DINOModule

__all__ = ["CASSModule", "ClassifierModule", "DINOModule", "pretraining_module_for"]


def pretraining_module_for(hparams: dict[str, Any]) -> type[CASSModule] | type[DINOModule]:
    """The module class that wrote a pretraining checkpoint, told from its hyperparameters."""
    if "global_crops" in hparams:
        return DINOModule
    if "cnn" in hparams and "vit" in hparams and "num_classes" not in hparams:
        return CASSModule
    raise ValueError(
        "not a CASS or DINO pretraining checkpoint (its hyperparameters are "
        f"{sorted(hparams)[:8]}...); fine-tuning checkpoints hold no arms to export"
    )
