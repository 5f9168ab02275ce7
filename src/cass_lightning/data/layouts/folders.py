"""Readers for layouts whose labels are folder names: image folders, Brain MRI, Dermofit, synthetic.

They share one scan: walk the class folders (optionally under train/val/test), list the image
files without decoding them, then check that no class folder is empty and that every split has
the same classes, since a missing class would shift every later label index.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass_lightning.data.index import IMAGE_EXTENSIONS, SPLITS, SampleIndex
from cass_lightning.data.layouts._common import (
    _BadFiles,
    _check_policy,
    _expected,
    _finish,
    _is_dir,
    _is_hidden,
    _mismatch,
    _open_root,
    _subdirs,
    _visible_entries,
)
from cass_lightning.data.synthetic import write_synthetic_dataset


# --------------------------------------------------------------------------- folder scanning
def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str) or not extensions:
        raise ValueError(f"extensions must be a non-empty list like ['.png'], got {extensions!r}")
    return tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)


def _scan_images(
    folder: Path, root: Path, extensions: tuple[str, ...], bad: _BadFiles
) -> list[str]:
    """Keys of the image files under ``folder``, sub-folders included (symlinks followed)."""
    found: list[str] = []
    seen: set[str] = set()
    prefix = Path(os.path.relpath(folder, root)).as_posix()
    stack = [(str(folder), prefix)]
    while stack:
        path, key_prefix = stack.pop()
        real = os.path.realpath(path)
        if real in seen:  # a symlink loop, or the same folder linked twice
            continue
        seen.add(real)
        with os.scandir(path) as entries:
            for entry in entries:
                if _is_hidden(entry.name):
                    continue
                key = f"{key_prefix}/{entry.name}"
                if _is_dir(entry):
                    stack.append((entry.path, key))
                elif entry.name.lower().endswith(extensions):
                    if entry.is_file():
                        found.append(key)
                    else:
                        bad.add(entry.path, "broken symbolic link")
    return found


def _scan_classes(
    root: Path, folder: Path, extensions: tuple[str, ...], bad: _BadFiles
) -> dict[str, list[str]]:
    """``{class: keys}`` for every visible class folder in ``folder``."""
    return {name: _scan_images(folder / name, root, extensions, bad) for name in _subdirs(folder)}


#: One scanned folder of classes: its official split (or None), its path relative to the root
#: ("" for the root itself) and ``{class: keys}``.
_ClassFolder = tuple[str | None, str, dict[str, list[str]]]


def _index_class_tree(
    layout: str,
    root: Path,
    folders: list[_ClassFolder],
    bad: _BadFiles,
    expected: str,
) -> SampleIndex:
    """Turn scanned class folders into an index.

    Missing files are reported first (they may be why a class looks empty); then every class
    folder must hold images and every split must have the same classes, since a missing class
    would shift every later label index.
    """
    skipped = bad.resolve()
    empty = [
        f"{prefix}/{name}/" if prefix else f"{name}/"
        for _, prefix, by_class in folders
        for name, keys in by_class.items()
        if not keys
    ]
    if empty:
        raise ValueError(
            f"{layout}: class folder(s) {empty} under {root} hold no images; expected {expected}. "
            "Remove the empty folders or add images."
        )
    reference = sorted(folders[0][2])
    if any(sorted(by_class) != reference for _, _, by_class in folders):
        described = "; ".join(
            f"{prefix}/ has {sorted(by_class)}" for _, prefix, by_class in folders
        )
        raise ValueError(
            f"{layout}: the split folders under {root} hold different class sets ({described}). "
            "Every split needs the same class folders so labels mean the same everywhere."
        )
    keys: list[str] = []
    labels: list[int] = []
    splits: list[str] = []
    for split, _, by_class in folders:
        for label, name in enumerate(reference):
            keys.extend(by_class[name])
            labels.extend([label] * len(by_class[name]))
            splits.extend([split or ""] * len(by_class[name]))
    has_splits = folders[0][0] is not None
    targets = np.asarray(labels, dtype=np.int64)
    return _finish(layout, root, keys, targets, reference, splits if has_splits else None, skipped)


def _index_folders(
    layout: str, root: Path, extensions: tuple[str, ...], on_bad_file: str, expected: str
) -> SampleIndex:
    """``<root>/<class>/<image>`` or ``<root>/{train,val,test}/<class>/<image>``."""
    bad = _BadFiles(layout, root, on_bad_file)
    names = _subdirs(root)
    split_folders = [name for name in names if name in SPLITS]
    folders: list[_ClassFolder] = []
    if split_folders:
        if "train" not in split_folders:
            raise ValueError(
                f"{layout}: {root} has split folder(s) {split_folders} but no train/; "
                f"expected {expected}"
            )
        others = [name for name in names if name not in SPLITS]
        if others:
            raise ValueError(
                f"{layout}: {root} mixes split folders {split_folders} with other folders "
                f"{others}; expected either <class>/ folders or train/ val/ test/ folders"
            )
        folders = [
            (split, split, _scan_classes(root, root / split, extensions, bad))
            for split in SPLITS
            if split in split_folders
        ]
        no_classes = [f"{prefix}/" for _, prefix, by_class in folders if not by_class]
        if no_classes:
            raise ValueError(
                f"{layout}: split folder(s) {no_classes} under {root} hold no class folders; "
                f"expected {expected}"
            )
    else:
        if not names:
            raise _mismatch(layout, root, expected, "there are no class folders")
        folders = [(None, "", _scan_classes(root, root, extensions, bad))]
    if (
        not any(keys for _, _, by_class in folders for keys in by_class.values())
        and not bad.entries
    ):
        endings = ", ".join(extensions)
        raise _mismatch(layout, root, expected, f"no image files (ending in {endings})")
    return _index_class_tree(layout, root, folders, bad, expected)


# --------------------------------------------------------------------------- folder layouts
def index_brain_mri(root: str | Path, *, on_bad_file: str = "error") -> SampleIndex:
    """Kaggle's Brain Tumor MRI set: ``Training/<class>/`` (split train), ``Testing/<class>/``
    (split test, the official test set). Grayscale JPEGs are fine: the reader gives RGB."""
    layout = "brain_mri"
    _check_policy(on_bad_file)
    expected = _expected(layout)
    resolved = _open_root(layout, root, expected)
    folders = {"train": "Training", "test": "Testing"}
    absent = [f"{name}/" for name in folders.values() if not (resolved / name).is_dir()]
    if absent:
        raise _mismatch(
            layout,
            resolved,
            expected,
            f"{' and '.join(absent)} not found",
            probe=lambda p: all((p / name).is_dir() for name in folders.values()),
        )
    bad = _BadFiles(layout, resolved, on_bad_file)
    scanned: list[_ClassFolder] = []
    for split, name in folders.items():
        by_class = _scan_classes(resolved, resolved / name, IMAGE_EXTENSIONS, bad)
        if not by_class:
            raise ValueError(
                f"{layout}: {resolved / name} holds no class folders; expected {expected}"
            )
        scanned.append((split, name, by_class))
    return _index_class_tree(layout, resolved, scanned, bad, expected)


def index_dermofit(root: str | Path, *, on_bad_file: str = "error") -> SampleIndex:
    """Dermofit: ``<class>/<lesion_id>/<lesion_id>.png``; the ``<lesion_id>mask.png``
    segmentation masks beside some images are never indexed, nor is any other file."""
    layout = "dermofit"
    _check_policy(on_bad_file)
    expected = _expected(layout)
    resolved = _open_root(layout, root, expected)
    bad = _BadFiles(layout, resolved, on_bad_file)
    per_class: dict[str, list[str]] = {}
    lesions = 0
    for name in _subdirs(resolved):
        keys: list[str] = []
        for lesion in _subdirs(resolved / name):
            lesions += 1
            folder = resolved / name / lesion
            wanted = f"{lesion}.png"
            files = [entry.name for entry in _visible_entries(folder) if not _is_dir(entry)]
            match = wanted if wanted in files else None
            if match is None:
                match = next((f for f in files if f.lower() == wanted.lower()), None)
            if match is None or not (folder / match).is_file():
                found = ", ".join(files[:5]) or "nothing"
                bad.add(
                    str(folder / wanted),
                    f"lesion folder {name}/{lesion}/ has no {wanted} (found: {found})",
                )
                continue
            keys.append(f"{name}/{lesion}/{match}")
        per_class[name] = keys
    if lesions == 0:
        raise _mismatch(layout, resolved, expected, "no <class>/<lesion_id>/ folders")
    return _index_class_tree(layout, resolved, [(None, "", per_class)], bad, expected)


def index_image_folder(
    root: str | Path,
    *,
    on_bad_file: str = "error",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> SampleIndex:
    """``<root>/<class>/<image>`` (no official splits) or ``<root>/{train,val,test}/<class>/...``
    (official splits; ``train/`` required, same class folders in every split)."""
    _check_policy(on_bad_file)
    normalised = _normalise_extensions(extensions)
    expected = _expected("image_folder", extensions=", ".join(normalised))
    resolved = _open_root("image_folder", root, expected)
    return _index_folders("image_folder", resolved, normalised, on_bad_file, expected)


def index_synthetic(
    root: str | Path,
    *,
    images_per_class: int = 100,
    val_images_per_class: int = 20,
    image_size: int = 96,
    seed: int = 77,
    on_bad_file: str = "error",
) -> SampleIndex:
    """The seeded synthetic set: written once under ``root`` (reused when present), then
    indexed like an image folder with its train/val splits. ``root`` is the synthetic folder."""
    _check_policy(on_bad_file)
    folder = write_synthetic_dataset(
        root,
        images_per_class=images_per_class,
        val_images_per_class=val_images_per_class,
        image_size=image_size,
        seed=seed,
    ).resolve()
    expected = _expected("synthetic")
    return _index_folders("synthetic", folder, IMAGE_EXTENSIONS, on_bad_file, expected)
