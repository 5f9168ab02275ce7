"""Data: dataset layouts, splits and label fractions, the paper's transforms, datamodules."""

from cass_lightning.data.datamodule import IndexedImageDataset, MedicalDataModule
from cass_lightning.data.index import SampleIndex
from cass_lightning.data.layouts import LAYOUTS, build_index
from cass_lightning.data.presets import (
    ImageFolderDataModule,
    MedMNISTDataModule,
    SyntheticDataModule,
)
from cass_lightning.data.settings import (
    CheckSettings,
    LoaderSettings,
    SplitSettings,
    ViewSettings,
)
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
    "LAYOUTS",
    "CheckSettings",
    "ImageFolderDataModule",
    "IndexedImageDataset",
    "LoaderSettings",
    "MedMNISTDataModule",
    "MedicalDataModule",
    "SampleIndex",
    "SplitSettings",
    "SyntheticDataModule",
    "ViewSettings",
    "build_index",
    "eval_transform",
    "paper_train_transform",
    "write_synthetic_dataset",
]
