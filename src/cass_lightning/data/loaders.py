"""Pieces of the datamodule's loaders: worker count, the dataset, and the batching rules.

The batching rules live here because two loaders need different ones. Pretraining's loader of
every training image keeps ``drop_last`` strictly (a split smaller than one batch is an error
worth fixing). The labelled loader must train even at 1% labels, where Dermofit or Autoimmune
give fewer labelled images than one batch: it then serves them as one smaller batch. Neither
ever hands BatchNorm a training batch of one image, which PyTorch refuses in train mode.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cass_lightning.data.index import ImageReader


def resolve_workers(num_workers: int) -> int:
    """-1 means "a sensible default": up to 4 workers, never more than the CPUs present."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < -1:
        raise ValueError(f"num_workers must be an int >= 0, or -1 for auto; got {num_workers!r}")
    if num_workers == -1:
        return min(4, os.cpu_count() or 1)
    return num_workers


class IndexedImageDataset(Dataset):
    """``(image, target)`` for a subset of an index, read through any :class:`ImageReader`."""

    def __init__(
        self, reader: ImageReader, keys: list[str], targets: np.ndarray, transform: Any
    ) -> None:
        self.reader = reader
        self.keys = keys
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image = self.transform(self.reader(self.keys[i]))
        target = self.targets[i]
        if target.ndim:  # multi-hot row
            return image, torch.as_tensor(target, dtype=torch.float32)
        return image, int(target)


def strict_batching(
    images: int, batch: int, drop_last: bool, what: str, root: Path
) -> tuple[int, bool]:
    """Pretraining's rule: with ``drop_last`` a split smaller than one batch is an error."""
    if drop_last and images < batch:
        raise ValueError(
            f"{what} of {root} has {images} images, fewer than one batch of {batch}; with "
            "drop_last=True no batch would be produced. Lower data.batch_size, add images, or "
            "set data.drop_last=false."
        )
    return batch, drop_last


def labelled_batching(
    images: int, batch: int, drop_last: bool, world_size: int, what: str, root: Path
) -> tuple[int, bool, str | None]:
    """``(batch, drop_last, note)`` for the labelled training loader on one device.

    Each device sees ``ceil(images / world_size)`` images (the distributed sampler pads). Fewer
    than one batch: one smaller batch of all of them, with a note saying so. Otherwise
    ``drop_last`` as configured, except that a last batch of one image is always dropped.
    A single image per device cannot train BatchNorm and is refused.
    """
    per_device = math.ceil(images / world_size)
    if per_device < 2:
        raise ValueError(
            f"{what} of {root} has {images} image(s) for {world_size} device(s): a training "
            "batch of one image breaks BatchNorm in train mode. Raise data.label_fraction, "
            "add labelled images, or train on fewer devices."
        )
    if per_device < batch:
        note = (
            f"{what} has {images} images, fewer than one batch of {batch}: each epoch trains "
            f"on one batch of {per_device}"
        )
        return per_device, False, note
    if not drop_last and per_device % batch == 1:
        return batch, True, None  # the remainder is one image: drop it, BatchNorm needs two
    return batch, drop_last, None
