"""LightningModules: CASS pretraining (and, later, the baselines and the classifier)."""

from cass_lightning.modules.cass import CASSModule

__all__ = ["CASSModule"]
