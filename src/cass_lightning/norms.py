"""The ImageNet normalisation constants, shared by the models and the data.

Their own module so a model can record its default normalisation without importing the data
package (``data/transforms.py`` re-exports them for older imports).
"""

from __future__ import annotations

from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]
