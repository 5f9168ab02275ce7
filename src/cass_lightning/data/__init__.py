"""Data: the paper's transforms, an ImageFolder dataset, and Lightning data modules."""

from cass_lightning.data.base import ImageFolderDataModule, SyntheticDataModule
from cass_lightning.data.datasets import ImageFolderDataset
from cass_lightning.data.synthetic import write_synthetic_dataset
from cass_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    paper_train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "SyntheticDataModule",
    "eval_transform",
    "paper_train_transform",
    "write_synthetic_dataset",
]
