"""Lightning data modules: any ImageFolder tree, or the built-in synthetic set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cass_lightning.data.datasets import ImageFolderDataset
from cass_lightning.data.synthetic import write_synthetic_dataset
from cass_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    paper_train_transform,
)


def _resolve_workers(num_workers: int) -> int:
    """-1 means "a sensible default": up to 4 workers, never more than the CPUs present."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < -1:
        raise ValueError(f"num_workers must be an int >= 0, or -1 for auto; got {num_workers!r}")
    if num_workers == -1:
        return min(4, os.cpu_count() or 1)
    return num_workers


class ImageFolderDataModule(L.LightningDataModule):
    """`<root>/<train_dir>/<class>/<image>` for training, optional `<root>/<val_dir>/...`.

    Training uses the paper's augmentation; validation a deterministic resize. Labels are kept
    for evaluation (e.g. linear probes) even though self-supervised pretraining ignores them.
    """

    def __init__(
        self,
        root: str | Path,
        img_size: int = 224,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train_dir: str = "train",
        val_dir: str = "val",
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.root = Path(root)
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = _resolve_workers(num_workers)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.drop_last = drop_last
        self.train_dataset: ImageFolderDataset | None = None
        self.val_dataset: ImageFolderDataset | None = None
        # Fail on a bad size now rather than on the first batch.
        paper_train_transform(img_size, self.mean, self.std)

    def dataset_root(self) -> Path:
        """The folder that holds `train_dir`/`val_dir`; subclasses may create it first."""
        return self.root

    def setup(self, stage: str | None = None) -> None:
        """Index the image folders (once); cheap, so every stage gets both splits."""
        if self.train_dataset is not None:
            return
        data_root = self.dataset_root()
        train = ImageFolderDataset(
            data_root / self.train_dir, paper_train_transform(self.img_size, self.mean, self.std)
        )
        val = None
        val_root = data_root / self.val_dir
        if val_root.exists():
            val = ImageFolderDataset(val_root, eval_transform(self.img_size, self.mean, self.std))
            if val.classes != train.classes:
                raise ValueError(
                    f"class folders differ between {train.root} {train.classes} and "
                    f"{val.root} {val.classes}; labels would not line up"
                )
        self.train_dataset, self.val_dataset = train, val

    def _require_setup(self) -> ImageFolderDataset:
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before using the data")
        return self.train_dataset

    @property
    def classes(self) -> list[str]:
        return list(self._require_setup().classes)

    @property
    def num_classes(self) -> int:
        return len(self._require_setup().classes)

    def _loader_kwargs(self) -> dict[str, Any]:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        workers = self.num_workers
        return {
            "batch_size": self.batch_size,
            "num_workers": workers,
            "pin_memory": pin,
            "persistent_workers": self.persistent_workers and workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        train = self._require_setup()
        if self.drop_last and len(train) < self.batch_size:
            raise ValueError(
                f"training set {train.root} has {len(train)} images, fewer than "
                f"batch_size={self.batch_size}; with drop_last=True no batch would be produced. "
                "Lower batch_size, add images, or set drop_last=False."
            )
        return DataLoader(train, shuffle=True, drop_last=self.drop_last, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if self.val_dataset is None:
            return []
        return DataLoader(self.val_dataset, shuffle=False, drop_last=False, **self._loader_kwargs())


class SyntheticDataModule(ImageFolderDataModule):
    """The seeded synthetic set from `write_synthetic_dataset`, cached under `root`."""

    def __init__(
        self,
        root: str | Path,
        images_per_class: int = 100,
        val_images_per_class: int = 20,
        image_size: int = 96,
        seed: int = 77,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.save_hyperparameters()
        self.synthetic_params = {
            "images_per_class": images_per_class,
            "val_images_per_class": val_images_per_class,
            "image_size": image_size,
            "seed": seed,
        }

    def prepare_data(self) -> None:
        """Runs on one process only (Lightning's rule), so only it writes to disk."""
        write_synthetic_dataset(self.root, **self.synthetic_params)

    def dataset_root(self) -> Path:
        # Returns the existing folder without writing when prepare_data already ran.
        return write_synthetic_dataset(self.root, **self.synthetic_params)
