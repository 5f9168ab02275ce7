"""Readers for layouts whose labels are folder names: image folders, Brain MRI, Dermofit, synthetic.

They share one scan (``scan.FolderScan``: links followed, loops cut, each real file once):
walk the class folders (optionally under train/val/test), list the image files without
decoding them, then check that no class folder is empty and that every split has the same
classes, since a missing class would shift every later label index. Brain MRI and Dermofit
know their classes: an extra class folder is refused by name unless ``allow_extra_classes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass_lightning.data.index import IMAGE_EXTENSIONS, SPLITS, SampleIndex
from cass_lightning.data.layouts._common import (
    MISSING_LABELS,
    _BadFiles,
    _check_policy,
    _expected,
    _finish,
    _is_dir,
    _mismatch,
    _open_root,
    _subdirs,
    _visible_entries,
    is_missing_label,
)
from cass_lightning.data.layouts.scan import ClassFolder, FolderScan, drop_duplicates
from cass_lightning.data.synthetic import write_synthetic_dataset

BRAIN_MRI_CLASSES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
DERMOFIT_CLASSES: tuple[str, ...] = (
    "AK", "BCC", "ML", "SCC", "SK", "IEC", "PYO", "VASC", "DF", "MEL",
)  # fmt: skip


# --------------------------------------------------------------------------- folder scanning
#: The endings named first when every format Pillow reads is accepted.
_COMMON_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def describe_extensions(extensions: Sequence[str]) -> str:
    """The endings for a message; Pillow's whole list (60 or so) is summarised."""
    if set(extensions) == set(IMAGE_EXTENSIONS):
        return ", ".join(_COMMON_ENDINGS) + " or any other format Pillow reads"
    return ", ".join(extensions)


def _normalise_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str) or not extensions:
        raise ValueError(f"extensions must be a non-empty list like ['.png'], got {extensions!r}")
    return tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)


def _index_class_tree(
    layout: str,
    root: Path,
    folders: list[ClassFolder],
    bad: _BadFiles,
    expected: str,
    linked: set[str] | None,
    ignored: dict[str, int] | None = None,
) -> SampleIndex:
    """Turn scanned class folders into an index.

    Missing files are reported first (they may be why a class looks empty); then every class
    folder must hold images and every split must have the same classes, since a missing class
    would shift every later label index. A file reached under two keys counts once (see
    ``scan.drop_duplicates``; ``linked`` names the keys reached through links, ``None``: any).
    """
    skipped = bad.resolve()
    _refuse_blank_classes(layout, root, folders)
    folders = drop_duplicates(layout, root, folders, linked)
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
    official = splits if has_splits else None
    return _finish(layout, root, keys, targets, reference, official, skipped, bad.meta, ignored)


def _refuse_blank_classes(layout: str, root: Path, folders: list[ClassFolder]) -> None:
    """Class folders whose name is blank or reads as a missing value (``nan``, ``None``) are
    refused by name: such a folder is usually a spreadsheet's empty cell turned into a path."""
    blank = sorted({repr(f"{prefix}/{name}/" if prefix else f"{name}/")
                    for _, prefix, by_class in folders for name in by_class
                    if is_missing_label(name)})  # fmt: skip
    if blank:
        raise ValueError(
            f"{layout}: class folder(s) {', '.join(blank)} under {root} have a blank or "
            f"missing-value name ({', '.join(MISSING_LABELS)}); rename them to the class they hold"
        )


def _index_folders(
    layout: str, root: Path, extensions: tuple[str, ...], on_bad_file: str, expected: str
) -> SampleIndex:
    """``<root>/<class>/<image>`` or ``<root>/{train,val,test}/<class>/<image>``."""
    bad = _BadFiles(layout, root, on_bad_file)
    scan = FolderScan(root, extensions, bad)
    names = _subdirs(root)
    split_folders = [name for name in names if name in SPLITS]
    folders: list[ClassFolder] = []
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
            (split, split, scan.classes(root / split, _subdirs(root / split), split))
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
        folders = [(None, "", scan.classes(root, names))]
    if (
        not any(keys for _, _, by_class in folders for keys in by_class.values())
        and not bad.entries
    ):
        endings = describe_extensions(extensions)
        raise _mismatch(layout, root, expected, f"no image files (ending in {endings})")
    return _index_class_tree(layout, root, folders, bad, expected, scan.linked, scan.ignored)


def _check_known_classes(
    layout: str, root: Path, folders: list[ClassFolder], known: Sequence[str], allow_extra: bool
) -> None:
    """Refuse class folders outside ``known`` (naming them) unless ``allow_extra``; warn about
    known classes that are absent, since the label space then differs from the paper's."""
    found = sorted({name for _, _, by_class in folders for name in by_class})
    extra = [name for name in found if name not in known]
    if extra and not allow_extra:
        places = sorted({f"{prefix}/{name}/" if prefix else f"{name}/"
                         for _, prefix, by_class in folders for name in by_class
                         if name in extra})  # fmt: skip
        raise ValueError(
            f"{layout}: class folder(s) {extra} under {root} are not {layout} classes "
            f"({', '.join(known)}); found at {', '.join(places)}. Remove or move them, or set "
            f"data.options.allow_extra_classes=true to train with them as extra classes."
        )
    missing = [name for name in known if name not in found]
    if missing:
        warnings.warn(
            f"{layout}: no class folder for {missing} under {root}; training on "
            f"{len(found)} classes ({', '.join(found)}) instead of the dataset's {len(known)}",
            stacklevel=3,
        )


# --------------------------------------------------------------------------- folder layouts
def index_brain_mri(
    root: str | Path, *, on_bad_file: str = "error", allow_extra_classes: bool = False
) -> SampleIndex:
    """Kaggle's Brain Tumor MRI set: ``Training/<class>/`` (split train), ``Testing/<class>/``
    (split test, the official test set). Grayscale JPEGs are fine: the reader gives RGB.

    The classes are glioma, meningioma, notumor and pituitary: another class folder (in both
    splits it would silently become a fifth class) is refused unless ``allow_extra_classes``.
    """
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
    scan = FolderScan(resolved, IMAGE_EXTENSIONS, bad)
    scanned: list[ClassFolder] = []
    for split, name in folders.items():
        classes = _subdirs(resolved / name)
        if not classes:
            raise ValueError(
                f"{layout}: {resolved / name} holds no class folders; expected {expected}"
            )
        scanned.append((split, name, {c: [] for c in classes}))
    _check_known_classes(layout, resolved, scanned, BRAIN_MRI_CLASSES, allow_extra_classes)
    scanned = [
        (split, name, scan.classes(resolved / name, list(by_class), split))
        for split, name, by_class in scanned
    ]
    return _index_class_tree(layout, resolved, scanned, bad, expected, scan.linked, scan.ignored)


def index_dermofit(
    root: str | Path, *, on_bad_file: str = "error", allow_extra_classes: bool = False
) -> SampleIndex:
    """Dermofit: ``<class>/<lesion_id>/<lesion_id>.png``; the ``<lesion_id>mask.png``
    segmentation masks beside some images are never indexed, nor is any other file.

    The classes are the library's ten (AK BCC ML SCC SK IEC PYO VASC DF MEL): another class
    folder is refused unless ``allow_extra_classes``.
    """
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
                    labels=(name,),
                )
                continue
            keys.append(f"{name}/{lesion}/{match}")
        per_class[name] = keys
    if lesions == 0:
        raise _mismatch(layout, resolved, expected, "no <class>/<lesion_id>/ folders")
    scanned: list[ClassFolder] = [(None, "", per_class)]
    _check_known_classes(layout, resolved, scanned, DERMOFIT_CLASSES, allow_extra_classes)
    return _index_class_tree(layout, resolved, scanned, bad, expected, None)


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
    expected = _expected("image_folder", extensions=describe_extensions(normalised))
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
