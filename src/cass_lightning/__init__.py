"""cass-lightning: CASS (Cross Architectural Self-Supervision) on Lightning, timm and Hydra."""

__version__ = "0.1.0"

from cass_lightning.losses import CASSLoss, cass_loss
from cass_lightning.modules.cass import CASSModule

__all__ = ["CASSLoss", "CASSModule", "__version__", "cass_loss"]
