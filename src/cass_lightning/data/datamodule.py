"""The shared datamodule: any layout -> validated index -> splits, label fractions, loaders.

One :class:`MedicalDataModule` serves every dataset (``layout`` picks the reader in
``layouts/``). At setup it indexes the root, checks every image (or builds/reuses the decoded
cache, which checks them too), leaves out unreadable images (``on_bad_file=skip``) *before*
drawing the splits, picks the labelled subset and writes ``splits.csv`` and
``data_report.json`` into ``output_dir`` so results can be traced.

- ``train_dataloader``: with ``train_subset="all"`` (pretraining) every training image, labels
  ignored whatever ``label_fraction`` says; with ``"labelled"`` (fine-tuning) the
  ``label_fraction`` subset.
- ``labelled_train_dataloader``: the ``label_fraction`` subset, for fine-tuning and probes; a
  subset smaller than one batch is served as one smaller batch (see ``loaders``).
- ``val_dataloader`` / ``test_dataloader``: deterministic resize and normalise.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from torch.utils.data import DataLoader

from cass_lightning.checks import check_choice
from cass_lightning.data.cache import ImageCache, build_cache, cache_size_for
from cass_lightning.data.fingerprint import dataset_fingerprint
from cass_lightning.data.index import ImageReader, SampleIndex
from cass_lightning.data.layouts import LAYOUTS, build_index, layout_takes
from cass_lightning.data.loaders import (
    IndexedImageDataset,
    labelled_batching,
    resolve_workers,
    strict_batching,
)
from cass_lightning.data.outputs import tell, write_outputs
from cass_lightning.data.settings import (  # noqa: F401  (the choices, where they were defined)
    BAD_FILE_POLICIES,
    TRAIN_SUBSETS,
    TRAIN_VIEWS,
    CheckSettings,
    LoaderSettings,
    SplitSettings,
    ViewSettings,
    group_settings,
)
from cass_lightning.data.setup_report import build_data_report
from cass_lightning.data.splits import (
    CLASS_WEIGHT_KINDS,
    assign_splits,
    class_weights,
    label_subset,
)
from cass_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DeviceAugment,
    eval_transform,
    paper_train_transform,
    uint8_resize_transform,
)
from cass_lightning.data.validate import (
    DataReport,
    probe_images,
)
from cass_lightning.data.views import dino_views
from cass_lightning.runtime import check_batch_size

__all__ = ["IndexedImageDataset", "MedicalDataModule", "resolve_workers"]


class MedicalDataModule(L.LightningDataModule):
    """Datasets of the paper and your own, behind one datamodule.

    Args:
        layout: ``isic2019``, ``brain_mri``, ``dermofit``, ``autoimmune``, ``medmnist``,
            ``image_folder``, ``csv`` or ``synthetic``.
        root: the dataset root, as distributed (never written to).
        options: layout-specific options (CSV file and columns, MedMNIST name and size, ...).
        img_size: training/eval input size (follows the model's).
        batch_size: the global batch; under DDP each device gets ``batch_size / world_size``.
        num_workers: loader processes per device; -1 picks ``min(4, CPUs)``.
        val_fraction, test_fraction: of the whole set, for layouts without official splits.
        split_seed: seed of those splits (the paper: 77).
        label_fraction: share of the training split that carries labels for fine-tuning.
        label_seed: seed of the labelled subset (nested across fractions for one seed); the
            configs make it follow the run's ``seed``. Recorded in the outputs.
        on_bad_file: ``error`` (default: stop, naming every bad file) or ``skip`` (leave them
            out before splitting, print what was left out per split and class, warn about
            classes left without images in a split, and write ``skipped.csv``).
        allow_outside_root: let CSV layouts (``isic2019``, ``csv``, ``autoimmune``) read paths
            that leave ``root`` (``../x``, absolute paths elsewhere); refused by default, naming
            the CSV line. Symbolic links inside the root are followed either way.
        check_images: ``full`` (decode every image at setup), ``header`` or ``none``.
        cache_dir: decode and resize each image once into this folder, reused across runs.
        cache_size: side of the cached images (>= img_size; default img_size).
        output_dir: where ``splits.csv``, ``data_report.json`` and ``skipped.csv`` go.
        class_weight: ``none``, ``inverse`` or ``paper`` (see ``splits.class_weights``).
        train_views: what ``train_dataloader`` (pretraining) yields per image: ``paper`` (CASS's
            single augmented view), ``pair`` (two independent draws of the paper's augmentation,
            for ``CASSModule(two_views=True)``) or ``dino`` (DINO's multi-crop list, see
            ``data.views``); ``None`` means ``paper``. The pretraining app passes the model's
            ``data_views()``. The labelled loader always keeps the single paper view, as
            fine-tuning needs.
        train_subset: what ``train_dataloader`` serves: ``all`` training images (pretraining)
            or the ``labelled`` subset (fine-tuning, with the paper's single augmented view).
        augment_on: where the paper's training augmentation runs: ``loader`` (the workers, on
            PIL images) or ``device`` (the training loaders yield resized uint8 images, from
            the decoded cache where one is set, and :meth:`transfer_batch_to_device` augments and
            normalises them on the device, each image with its own random draws).
    """

    def __init__(
        self,
        layout: str,
        root: str | Path,
        options: dict[str, Any] | None = None,
        img_size: int = 224,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 77,
        label_fraction: float = 1.0,
        label_seed: int = 0,
        on_bad_file: str = "error",
        allow_outside_root: bool = False,
        check_images: str = "full",
        cache_dir: str | Path | None = None,
        cache_size: int | None = None,
        output_dir: str | Path | None = None,
        class_weight: str = "inverse",
        drop_last: bool = True,
        train_views: str | None = "paper",
        train_subset: str = "all",
        augment_on: str = "loader",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown data layout {layout!r}; known: {sorted(LAYOUTS)}")
        self.loader, self.split, self.checks, self.views = group_settings(
            dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                 persistent_workers=persistent_workers, drop_last=drop_last,
                 augment_on=augment_on, val_fraction=val_fraction, test_fraction=test_fraction,
                 split_seed=split_seed, label_fraction=label_fraction, label_seed=label_seed,
                 train_subset=train_subset, check_images=check_images, on_bad_file=on_bad_file,
                 allow_outside_root=allow_outside_root, img_size=img_size, mean=mean, std=std,
                 train_views=train_views)
        )  # fmt: skip
        check_choice("class_weight", class_weight, CLASS_WEIGHT_KINDS)
        views = self.views.train_views
        if augment_on == "device" and views != "paper":
            raise ValueError(
                f"data.augment_on=device runs the paper's single-view augmentation on the device; "
                f"train_views={views} (DINO's crops or two views) is augmented in the "
                "loader: use data.augment_on=loader"
            )
        self.layout = layout
        self.root = Path(root).expanduser()
        self.options = dict(options or {})
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = resolve_workers(num_workers)
        self.mean, self.std = self.views.mean, self.views.std
        self.cache_size = cache_size_for(img_size, cache_size) if cache_dir else None
        # Fail on a bad size now rather than on the first batch.
        self.train_transform = paper_train_transform(img_size, self.mean, self.std)
        self.device_augment: DeviceAugment | None = None
        if augment_on == "device":  # the loader resizes to uint8; the augmentation runs on
            self.train_transform = uint8_resize_transform(img_size)  # the device (below)
            self.device_augment = DeviceAugment(self.mean, self.std)
        self.eval_transform = eval_transform(img_size, self.mean, self.std)
        self.pretrain_transform: Any = self.train_transform
        if views == "dino":
            self.pretrain_transform = dino_views(img_size, mean=self.mean, std=self.std)
        elif views == "pair":
            self.pretrain_transform = MultiViewTransform([self.train_transform] * 2)
        self.index: SampleIndex | None = None
        self.reader: ImageReader | None = None
        self.splits: np.ndarray | None = None
        self.labelled: np.ndarray | None = None
        self.report: DataReport | None = None
        #: The indexed files' fingerprint (:func:`dataset_fingerprint`), set by ``setup``.
        self.fingerprint: dict[str, Any] | None = None

    @classmethod
    def from_settings(
        cls,
        *args: Any,
        loader: LoaderSettings | None = None,
        split: SplitSettings | None = None,
        checks: CheckSettings | None = None,
        views: ViewSettings | None = None,
        **kwargs: Any,
    ) -> MedicalDataModule:
        """The datamodule from the settings groups (any left out keep their defaults) plus the
        remaining keyword arguments (``layout``/``root`` or a preset's own, ``options``,
        ``cache_dir``, ``output_dir``, ...); the same as passing every key flat."""
        flat: dict[str, Any] = {}
        for group in (loader, split, checks, views):
            flat.update(group.as_kwargs() if group is not None else {})
        if clash := sorted(set(flat) & set(kwargs)):
            raise TypeError(f"{', '.join(clash)} given both flat and in a settings group")
        return cls(*args, **flat, **kwargs)

    # ------------------------------------------------------------------ building
    def build_index(self) -> SampleIndex:
        options = dict(self.options)
        if layout_takes(self.layout, "allow_outside_root"):
            options.setdefault("allow_outside_root", self.checks.allow_outside_root)
        return build_index(self.layout, self.root, on_bad_file=self.checks.on_bad_file, **options)

    def prepare_data(self) -> None:
        """One process writes what is shared: the synthetic images, the decoded cache."""
        index = self.build_index()
        if self.hparams.cache_dir:
            build_cache(index, self.hparams.cache_dir, self.cache_size, on_bad_file="skip")

    def setup(self, stage: str | None = None) -> None:
        """Index, check, split and pick labels once; every stage reuses the result."""
        if self.index is not None:
            return
        full = self.build_index()
        bad, sizes = self._check(full)
        keep = np.array([key not in bad for key in full.keys], dtype=bool)
        if not keep.any():
            listed = [f"  {full.reader.describe(k)}: {why}" for k, why in list(bad.items())[:50]]
            raise ValueError(
                f"none of the {len(full)} images under {full.root} can be read; fix or "
                "replace them (the first 50):\n" + "\n".join(listed)
            )
        # Unreadable images go before the splits are drawn, so no split gets a class whose
        # images there are all unreadable.
        index = dataclasses.replace(
            full,
            keys=[key for key, ok in zip(full.keys, keep) if ok],
            targets=full.targets[keep],
            splits=None if full.splits is None else full.splits[keep],
        )
        hp, sp = self.hparams, self.split
        splits = assign_splits(index, sp.val_fraction, sp.test_fraction, sp.split_seed)
        train = np.flatnonzero(splits == "train")
        labelled = label_subset(index, train, sp.label_fraction, sp.label_seed)
        report = build_data_report(full, index, bad, sizes, keep, splits, labelled, hp)
        full_splits = np.full(len(full), "excluded", dtype=object)
        full_splits[keep] = splits
        self.fingerprint = dataset_fingerprint(full)
        if self.hparams.output_dir is not None and self._is_main_process():
            write_outputs(Path(self.hparams.output_dir), full, full_splits,
                          np.flatnonzero(keep)[labelled], report, sp.label_seed,
                          self.fingerprint)  # fmt: skip
        if not report.ok:
            raise ValueError(report.format())
        if self._is_main_process():
            tell(report)
        self.index, self.splits, self.labelled, self.report = index, splits, labelled, report

    def _is_main_process(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def _check(self, index: SampleIndex) -> tuple[dict[str, str], list[Any]]:
        """Bad keys with reasons, and each image's size where known."""
        if self.hparams.cache_dir:
            cache: ImageCache = build_cache(
                index, self.hparams.cache_dir, self.cache_size, on_bad_file="skip"
            )
            self.reader = cache.reader()
            return dict(cache.bad), [None] * len(index)
        self.reader = index.reader
        probes = probe_images(
            index.reader, index.keys, self.checks.check_images, workers=self.num_workers
        )
        bad = {key: why for key, (_, why) in zip(index.keys, probes) if why is not None}
        return bad, [size for size, _ in probes]

    # ------------------------------------------------------------------ accessors
    def _require_setup(self) -> SampleIndex:
        if self.index is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before using the data")
        return self.index

    @property
    def classes(self) -> list[str]:
        return list(self._require_setup().classes)

    @property
    def num_classes(self) -> int:
        return self._require_setup().num_classes

    @property
    def multi_label(self) -> bool:
        return self._require_setup().multi_label

    def split_indices(self, split: str) -> np.ndarray:
        self._require_setup()
        return np.flatnonzero(self.splits == split)

    def class_weights(self, kind: str | None = None) -> torch.Tensor:
        """Loss weights from the class counts of the whole training split, whatever
        ``label_fraction`` is (as the reference notebooks compute them): at 1% labels the
        labelled subset has about one image per class, whose counts would weigh every class
        the same. ``kind`` defaults to ``class_weight`` (see ``splits.class_weights``)."""
        index = self._require_setup()
        counts = index.class_counts(self.split_indices("train"))
        return torch.from_numpy(class_weights(counts, kind or self.hparams.class_weight))

    def per_device_batch_size(self) -> int:
        """The global batch split over the devices of the attached trainer."""
        world = self.trainer.world_size if self.trainer is not None else 1
        return check_batch_size(self.batch_size, world) // world

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """The copy to the device, then with ``augment_on=device`` the paper's augmentation and
        normalisation of a training batch's uint8 images there (evaluation batches arrive
        normalised from the loader and pass unchanged).

        Done here rather than in ``on_after_batch_transfer``, which Lightning calls on the
        datamodule *instead of* the model's when both define it: DINO's own
        ``on_after_batch_transfer`` (its multi-crop views) must still run after this."""
        batch = super().transfer_batch_to_device(batch, device, dataloader_idx)
        return self.augment_on_device(batch)

    def augment_on_device(self, batch: Any) -> Any:
        """The device half of ``augment_on=device`` for a batch already on its device."""
        if self.device_augment is None:
            return batch
        if isinstance(batch, list | tuple) and batch and _is_uint8(batch[0]):
            return type(batch)([self.device_augment(batch[0]), *batch[1:]])
        if _is_uint8(batch):
            return self.device_augment(batch)
        return batch

    # ------------------------------------------------------------------ loaders
    def dataset(
        self, indices: np.ndarray, train: bool, transform: Any = None, hide_unlabelled: bool = False
    ) -> IndexedImageDataset:
        """Images ``indices`` with their targets; ``hide_unlabelled`` gives the training images
        outside the labelled subset the target -1 (single-label data), so online probes only
        learn from the labels a run is allowed to use."""
        index = self._require_setup()
        keys = [index.keys[i] for i in indices]
        if transform is None:
            transform = self.train_transform if train else self.eval_transform
        targets = index.targets[indices]
        if hide_unlabelled and not index.multi_label:
            targets = np.where(np.isin(indices, self.labelled), targets, -1)
        return IndexedImageDataset(self.reader, keys, targets, transform)

    def _loader(
        self,
        indices: np.ndarray,
        train: bool,
        what: str,
        transform: Any = None,
        hide_unlabelled: bool = False,
        labelled: bool = False,
    ) -> DataLoader:
        """A loader of ``indices``; training loaders follow ``loaders``' batching rules
        (``labelled``: the labelled subset's, which trains even below one batch)."""
        batch = self.per_device_batch_size()
        drop_last = train and self.loader.drop_last
        if train and labelled:
            world = self.trainer.world_size if self.trainer is not None else 1
            batch, drop_last, note = labelled_batching(
                len(indices), batch, drop_last, world, what, self.root
            )
            if note and self._is_main_process():
                print(note, file=sys.stderr)
        elif train:
            batch, drop_last = strict_batching(len(indices), batch, drop_last, what, self.root)
        pin = (
            torch.cuda.is_available() if self.loader.pin_memory is None else self.loader.pin_memory
        )
        return DataLoader(
            self.dataset(indices, train, transform, hide_unlabelled),
            batch_size=batch,
            shuffle=train,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.loader.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Every training image, augmented (``train_subset="all"``): pretraining ignores the
        labels; those outside the ``label_fraction`` subset read -1 so online probes cannot use
        them. With ``train_subset="labelled"``, :meth:`labelled_train_dataloader`."""
        if self.split.train_subset == "labelled":
            return self.labelled_train_dataloader()
        return self._loader(
            self.split_indices("train"),
            True,
            "the training split",
            self.pretrain_transform,
            hide_unlabelled=True,
        )

    def labelled_train_dataloader(self) -> DataLoader:
        """The ``label_fraction`` subset of the training split, augmented."""
        self._require_setup()
        return self._loader(self.labelled, True, "the labelled training subset", labelled=True)

    def labelled_eval_dataloader(self) -> DataLoader:
        """The labelled training subset without augmentation (the kNN bank)."""
        self._require_setup()
        return self._loader(self.labelled, False, "the labelled training subset")

    def val_dataloader(self) -> DataLoader | list:
        indices = self.split_indices("val")
        return self._loader(indices, False, "the validation split") if len(indices) else []

    def test_dataloader(self) -> DataLoader | list:
        indices = self.split_indices("test")
        return self._loader(indices, False, "the test split") if len(indices) else []


def _is_uint8(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8
