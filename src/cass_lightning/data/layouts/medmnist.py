"""Reader for MedMNIST ``.npz`` archives, and :class:`NpzReader`, which serves their rows as images.

Unlike the other layouts the samples are array rows, not files: keys are ``"<split>/<row>"``
and the index's reader decodes rows from arrays held in memory. ``NpzReader`` keeps only plain
attributes so it pickles into DataLoader workers.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cass_lightning.data.index import SPLITS, SampleIndex
from cass_lightning.data.layouts.helpers import check_policy, open_root, visible_entries

MEDMNIST_ARRAYS: tuple[str, ...] = tuple(
    f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")
)
#: What the layout expects under its root; ``{file}`` is the file name(s) asked for.
MEDMNIST_EXPECTED = "{file} (a MedMNIST .npz with arrays " + ", ".join(MEDMNIST_ARRAYS) + ")"


# --------------------------------------------------------------------------- MedMNIST
class NpzReader:
    """Rows of a MedMNIST ``.npz`` as RGB images; keys are ``"<split>/<row>"``.

    The image arrays are decompressed once and held in memory (reading a row from the zip each
    time would decompress the whole array). Plain attributes keep it picklable for workers.
    """

    def __init__(self, path: str | Path, images: dict[str, np.ndarray]) -> None:
        self.path = Path(path)
        self.images = images

    def _locate(self, key: str) -> tuple[str, int]:
        split, _, row = key.partition("/")
        images = self.images.get(split)
        if images is None or not (row.isascii() and row.isdigit()) or int(row) >= len(images):
            raise KeyError(
                f"{key!r} is not a sample of {self.path}: expected '<split>/<row>' with split "
                f"in {sorted(self.images)} and row below that split's length"
            )
        return split, int(row)

    def __call__(self, key: str) -> Image.Image:
        split, row = self._locate(key)
        pixels = self.images[split][row]
        if pixels.ndim == 3 and pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
        return Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")

    def describe(self, key: str) -> str:
        split, _, row = key.partition("/")
        shown = int(row) if row.isascii() and row.isdigit() else row
        return f"{self.path.name}[{split}][{shown}]"

    def fingerprint(self, key: str) -> str:
        stat = os.stat(self.path)
        return f"{stat.st_size}-{stat.st_mtime_ns}"


#: What reading a damaged archive raises: a truncated or non-zip file (BadZipFile), a corrupted
#: member (BadZipFile "Bad CRC-32", zlib.error), a cut ``.npy`` header (ValueError, EOFError).
_DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _damaged(path: Path, exc: BaseException) -> ValueError:
    return ValueError(
        f"medmnist: {path} is damaged or incomplete ({type(exc).__name__}: {exc}). It is "
        "usually an interrupted download: download the file again and compare its size and "
        "MD5 with the ones MedMNIST publishes, then rerun."
    )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The six MedMNIST arrays, read into memory; a missing array raises naming it, a damaged
    archive raises a ValueError naming the file and what to do (never a bare zip error)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except _DAMAGED as exc:
        raise _damaged(path, exc) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"medmnist: {path} holds a single array, not an .npz archive")
    with archive:
        absent = [key for key in MEDMNIST_ARRAYS if key not in archive.files]
        if absent:
            raise ValueError(
                f"medmnist: {path} has no array(s) {absent}; found arrays {sorted(archive.files)}"
            )
        try:
            return {key: archive[key] for key in MEDMNIST_ARRAYS}
        except _DAMAGED as exc:
            raise _damaged(path, exc) from exc


def _npz_size(file_name: str, name: str) -> int:
    """The image side a MedMNIST file name stands for: 28 without a suffix."""
    suffix = file_name[len(name) : -len(".npz")]
    return int(suffix[1:]) if suffix else 28


def _choose_npz(root: Path, name: str, candidates: list[str], expected: str) -> Path:
    """The requested file; else the only other size of the same set (with a warning).

    ``data.size`` defaults to 64 while the standard download is ``<name>.npz`` (28 px): when
    the requested size is absent and exactly one ``<name>.npz`` / ``<name>_<size>.npz`` is
    present it is used, since the datamodule resizes images to ``img_size`` anyway. Several
    other sizes are ambiguous and refused.
    """
    path = next((root / c for c in candidates if (root / c).is_file()), None)
    if path is not None:
        return path
    present = sorted(e.name for e in visible_entries(root) if e.name.lower().endswith(".npz"))
    pattern = re.compile(rf"{re.escape(name)}(_\d+)?\.npz")
    same_set = [f for f in present if pattern.fullmatch(f) and (root / f).is_file()]
    if len(same_set) == 1:
        found = same_set[0]
        warnings.warn(
            f"medmnist: {root / candidates[0]} not found; using {found} "
            f"({_npz_size(found, name)} px images), the only {name} file in {root}. Images are "
            f"resized to the training img_size either way; set data.size="
            f"{_npz_size(found, name)} to ask for this file and silence this warning.",
            stacklevel=3,
        )
        return root / found
    if len(same_set) > 1:
        sizes = ", ".join(f"{f} ({_npz_size(f, name)} px)" for f in same_set)
        raise FileNotFoundError(
            f"medmnist: {root / candidates[0]} not found, and {root} holds several other sizes "
            f"of {name}: {sizes}. Choose one with data.size=<px> (28 for {name}.npz)."
        )
    raise FileNotFoundError(
        f"medmnist: {root / candidates[0]} not found; .npz files in {root}: "
        f"{present or 'none'}. Expected {expected} under {root}"
    )


def _medmnist_class_names(
    class_names: Sequence[str] | Mapping[Any, str] | None, count: int, multi_label: bool, path: Path
) -> list[str]:
    """``class_names`` (a list, or MedMNIST's ``INFO[name]["label"]`` dict) or "0".."C-1"."""
    if class_names is None:
        return [str(i) for i in range(count)]
    if isinstance(class_names, Mapping):
        items = sorted(class_names.items(), key=lambda item: int(item[0]))
        names = [str(value) for _, value in items]
    elif isinstance(class_names, str):
        raise ValueError(f"medmnist: class_names must be a list of names, got {class_names!r}")
    else:
        names = [str(name) for name in class_names]
    fits = len(names) == count if multi_label else len(names) >= count
    if not fits:
        what = f"{count} label columns" if multi_label else f"labels up to {count - 1}"
        raise ValueError(f"medmnist: class_names has {len(names)} names but {path} has {what}")
    return names


def index_medmnist(
    root: str | Path,
    *,
    name: str,
    size: int | None = None,
    class_names: Sequence[str] | Mapping[Any, str] | None = None,
    on_bad_file: str = "error",
) -> SampleIndex:
    """A MedMNIST v2/v3 set: ``<root>/<name>.npz`` (28 px) or ``<root>/<name>_<size>.npz``.

    When the file of ``size`` is absent and exactly one other size of the set is there, that
    one is used with a warning naming it (see :func:`_choose_npz`).

    Labels of shape ``(N, 1)`` are multi-class, ``(N, C)`` with C > 1 multi-label (ChestMNIST).
    Splits are the official train/val/test arrays. ``on_bad_file`` is accepted for a uniform
    interface; an array cannot point at a missing file.
    """
    check_policy(on_bad_file)
    if not isinstance(name, str) or not name.strip() or "/" in name or os.sep in name:
        raise ValueError(f"medmnist: name must be a set name like 'dermamnist', got {name!r}")
    name = name.strip().removesuffix(".npz")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"medmnist: size must be None or a positive int like 64, got {size!r}")
    if size is None:
        candidates = [f"{name}.npz"]
    elif size == 28:
        candidates = [f"{name}.npz", f"{name}_28.npz"]
    else:
        candidates = [f"{name}_{size}.npz"]
    expected = MEDMNIST_EXPECTED.format(file=" or ".join(candidates))
    resolved = open_root("medmnist", root, expected)
    path = _choose_npz(resolved, name, candidates, expected)
    arrays = _load_npz(path)

    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in SPLITS:
        pixels, target = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if pixels.dtype != np.uint8 or not (
            pixels.ndim == 3 or (pixels.ndim == 4 and pixels.shape[-1] in (1, 3))
        ):
            raise ValueError(
                f"medmnist: {path}: {split}_images has shape {pixels.shape} and dtype "
                f"{pixels.dtype}; expected uint8 (N, H, W) or (N, H, W, 3)"
            )
        if target.ndim == 1:
            target = target[:, None]
        if target.ndim != 2 or len(target) != len(pixels):
            raise ValueError(
                f"medmnist: {path}: {split}_labels has shape {target.shape} for {len(pixels)} "
                f"rows of {split}_images; expected ({len(pixels)}, 1) or ({len(pixels)}, C)"
            )
        if not np.issubdtype(target.dtype, np.number) or not np.array_equal(
            target, np.round(target)
        ):
            raise ValueError(f"medmnist: {path}: {split}_labels must hold integers")
        images[split], labels[split] = pixels, target
    widths = {split: target.shape[1] for split, target in labels.items()}
    if len(set(widths.values())) > 1:
        raise ValueError(f"medmnist: {path}: label arrays differ in columns: {widths}")
    multi_label = next(iter(widths.values())) > 1
    order = sorted(SPLITS)  # keys sort as test/..., train/..., val/...
    stacked = np.concatenate([labels[split] for split in order])
    if len(stacked) == 0:
        raise ValueError(f"medmnist: {path} holds no samples in any split")
    if multi_label:
        if not np.isin(stacked, (0, 1)).all():
            raise ValueError(f"medmnist: {path}: multi-label labels must be 0 or 1")
        targets = stacked.astype(np.float32)
        count = targets.shape[1]
    else:
        targets = stacked[:, 0].astype(np.int64)
        if targets.min() < 0:
            raise ValueError(f"medmnist: {path}: labels must be >= 0, found {targets.min()}")
        count = int(targets.max()) + 1
    classes = _medmnist_class_names(class_names, count, multi_label, path)

    width = max(6, len(str(max(len(images[split]) for split in order) - 1)))
    keys = [f"{split}/{row:0{width}d}" for split in order for row in range(len(images[split]))]
    splits = np.array([split for split in order for _ in range(len(images[split]))], dtype=object)
    return SampleIndex(
        name="medmnist",
        root=resolved,
        keys=keys,
        targets=targets,
        classes=classes,
        reader=NpzReader(path, images),
        splits=splits,
    )
