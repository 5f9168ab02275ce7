"""The datamodule's settings, grouped by what they decide: loading, splitting, checking and the
views. Each group checks its own values on creation, so a bad value is named before any file is
read. :class:`~.datamodule.MedicalDataModule` still takes them as flat keyword arguments (the
Hydra configs, notebooks and saved hyperparameters use those names) and builds these groups;
:meth:`~.datamodule.MedicalDataModule.from_settings` takes the groups themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cass_lightning.checks import check_choice
from cass_lightning.data.layouts.helpers import BAD_FILE_POLICIES
from cass_lightning.data.transforms import AUGMENT_PLACES, IMAGENET_MEAN, IMAGENET_STD
from cass_lightning.data.validate import CHECK_LEVELS
from cass_lightning.runtime import check_batch_size

TRAIN_VIEWS = ("paper", "pair", "dino")
TRAIN_SUBSETS = ("all", "labelled")


class _Flat:
    """Settings that travel as the datamodule's flat keyword arguments."""

    def as_kwargs(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return {f.name: getattr(self, f.name) for f in fields}


@dataclasses.dataclass(frozen=True)
class LoaderSettings(_Flat):
    """How batches are served: the global batch, loader processes, memory and where the
    training augmentation runs (``loader`` workers or the ``device``)."""

    batch_size: int = 16
    num_workers: int = 0
    pin_memory: bool | None = None
    persistent_workers: bool = True
    drop_last: bool = True
    augment_on: str = "loader"

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size)
        check_choice("augment_on", self.augment_on, AUGMENT_PLACES)


@dataclasses.dataclass(frozen=True)
class SplitSettings(_Flat):
    """Which images train, validate and test, which training images carry labels, and which of
    them the training loader serves (``all`` for pretraining, ``labelled`` for fine-tuning)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 77
    label_fraction: float = 1.0
    label_seed: int = 0
    train_subset: str = "all"

    def __post_init__(self) -> None:
        check_choice("train_subset", self.train_subset, TRAIN_SUBSETS)
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")


@dataclasses.dataclass(frozen=True)
class CheckSettings(_Flat):
    """How the files are checked at setup, and what a bad one does."""

    check_images: str = "full"
    on_bad_file: str = "error"
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        check_choice("on_bad_file", self.on_bad_file, BAD_FILE_POLICIES)
        check_choice("check_images", self.check_images, CHECK_LEVELS)


@dataclasses.dataclass(frozen=True)
class ViewSettings(_Flat):
    """What the model sees: the input size, the normalisation and the pretraining views
    (``paper``, ``pair`` or ``dino``; ``None`` means ``paper``)."""

    img_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    train_views: str | None = "paper"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        object.__setattr__(self, "train_views", self.train_views or "paper")
        check_choice("train_views", self.train_views, TRAIN_VIEWS)


def group_settings(
    kwargs: dict[str, Any],
) -> tuple[LoaderSettings, SplitSettings, CheckSettings, ViewSettings]:
    """The four groups from the datamodule's flat keyword arguments (each group's own keys)."""
    groups = []
    for kind in (LoaderSettings, SplitSettings, CheckSettings, ViewSettings):
        names = {f.name for f in dataclasses.fields(kind)}
        groups.append(kind(**{k: v for k, v in kwargs.items() if k in names}))
    return tuple(groups)  # type: ignore[return-value]
