"""LightningModules: CASS pretraining, the DINO baseline, and fine-tuning / linear probing."""

from cass_lightning.modules.cass import CASSModule
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.modules.dino import DINOModule

__all__ = ["CASSModule", "ClassifierModule", "DINOModule"]
