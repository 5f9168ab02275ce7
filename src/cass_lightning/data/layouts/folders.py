"""Readers for layouts whose labels are folder names: image folders, Brain MRI, Dermofit, synthetic.

They share one scan (``scan.FolderScan``: links followed, loops cut, each real file once):
walk the class folders (optionally under train/val/test), list the image files without
decoding them, then (``scan.index_class_tree``) check that no class folder is empty and that
every split has the same classes, since a missing class would shift every later label index.
Brain MRI and Dermofit know their classes: an extra class folder is refused by name unless
``allow_extra_classes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cass_lightning.data.index import IMAGE_EXTENSIONS, SPLITS, SampleIndex
from cass_lightning.data.layouts.helpers import (
    BadFiles,
    check_policy,
    is_dir,
    mismatch,
    open_root,
    subdirs,
    visible_entries,
)
from cass_lightning.data.layouts.scan import (
    ClassFolder,
    FolderScan,
    check_known_classes,
    index_class_tree,
)
from cass_lightning.data.synthetic import write_synthetic_dataset

BRAIN_MRI_CLASSES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
DERMOFIT_CLASSES: tuple[str, ...] = (
    "AK", "BCC", "ML", "SCC", "SK", "IEC", "PYO", "VASC", "DF", "MEL",
)  # fmt: skip

# What each layout expects under its root; every message about a root that does not fit says it.
BRAIN_MRI_EXPECTED = (
    "Training/<class>/<image>.jpg and Testing/<class>/<image>.jpg "
    "(classes " + ", ".join(BRAIN_MRI_CLASSES) + ")"
)
DERMOFIT_EXPECTED = "<class>/<lesion_id>/<lesion_id>.png (e.g. BCC/B123/B123.png)"
#: ``{extensions}``: the accepted endings.
IMAGE_FOLDER_EXPECTED = (
    "<class>/<image> folders, or train/<class>/<image> (plus optional val/ and test/) "
    "with images ending in {extensions}"
)
SYNTHETIC_EXPECTED = "a folder written by write_synthetic_dataset (train/<class>/*.png, val/...)"


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


def _index_folders(
    layout: str, root: Path, extensions: tuple[str, ...], on_bad_file: str, expected: str
) -> SampleIndex:
    """``<root>/<class>/<image>`` or ``<root>/{train,val,test}/<class>/<image>``."""
    bad = BadFiles(layout, root, on_bad_file)
    scan = FolderScan(root, extensions, bad)
    names = subdirs(root)
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
            (split, split, scan.classes(root / split, subdirs(root / split), split))
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
            raise mismatch(layout, root, expected, "there are no class folders")
        folders = [(None, "", scan.classes(root, names))]
    if (
        not any(keys for _, _, by_class in folders for keys in by_class.values())
        and not bad.entries
    ):
        endings = describe_extensions(extensions)
        raise mismatch(layout, root, expected, f"no image files (ending in {endings})")
    return index_class_tree(layout, root, folders, bad, expected, scan.linked, scan.ignored)


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
    check_policy(on_bad_file)
    expected = BRAIN_MRI_EXPECTED
    resolved = open_root(layout, root, expected)
    folders = {"train": "Training", "test": "Testing"}
    absent = [f"{name}/" for name in folders.values() if not (resolved / name).is_dir()]
    if absent:
        raise mismatch(
            layout,
            resolved,
            expected,
            f"{' and '.join(absent)} not found",
            probe=lambda p: all((p / name).is_dir() for name in folders.values()),
        )
    bad = BadFiles(layout, resolved, on_bad_file)
    scan = FolderScan(resolved, IMAGE_EXTENSIONS, bad)
    scanned: list[ClassFolder] = []
    for split, name in folders.items():
        classes = subdirs(resolved / name)
        if not classes:
            raise ValueError(
                f"{layout}: {resolved / name} holds no class folders; expected {expected}"
            )
        scanned.append((split, name, {c: [] for c in classes}))
    check_known_classes(layout, resolved, scanned, BRAIN_MRI_CLASSES, allow_extra_classes)
    scanned = [
        (split, name, scan.classes(resolved / name, list(by_class), split))
        for split, name, by_class in scanned
    ]
    return index_class_tree(layout, resolved, scanned, bad, expected, scan.linked, scan.ignored)


def index_dermofit(
    root: str | Path, *, on_bad_file: str = "error", allow_extra_classes: bool = False
) -> SampleIndex:
    """Dermofit: ``<class>/<lesion_id>/<lesion_id>.png``; the ``<lesion_id>mask.png``
    segmentation masks beside some images are never indexed, nor is any other file.

    The classes are the library's ten (AK BCC ML SCC SK IEC PYO VASC DF MEL): another class
    folder is refused unless ``allow_extra_classes``.
    """
    layout = "dermofit"
    check_policy(on_bad_file)
    expected = DERMOFIT_EXPECTED
    resolved = open_root(layout, root, expected)
    bad = BadFiles(layout, resolved, on_bad_file)
    per_class: dict[str, list[str]] = {}
    lesions = 0
    for name in subdirs(resolved):
        keys: list[str] = []
        for lesion in subdirs(resolved / name):
            lesions += 1
            folder = resolved / name / lesion
            wanted = f"{lesion}.png"
            files = [entry.name for entry in visible_entries(folder) if not is_dir(entry)]
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
        raise mismatch(layout, resolved, expected, "no <class>/<lesion_id>/ folders")
    scanned: list[ClassFolder] = [(None, "", per_class)]
    check_known_classes(layout, resolved, scanned, DERMOFIT_CLASSES, allow_extra_classes)
    return index_class_tree(layout, resolved, scanned, bad, expected, None)


def index_image_folder(
    root: str | Path,
    *,
    on_bad_file: str = "error",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> SampleIndex:
    """``<root>/<class>/<image>`` (no official splits) or ``<root>/{train,val,test}/<class>/...``
    (official splits; ``train/`` required, same class folders in every split)."""
    check_policy(on_bad_file)
    normalised = _normalise_extensions(extensions)
    expected = IMAGE_FOLDER_EXPECTED.format(extensions=describe_extensions(normalised))
    resolved = open_root("image_folder", root, expected)
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
    check_policy(on_bad_file)
    folder = write_synthetic_dataset(
        root,
        images_per_class=images_per_class,
        val_images_per_class=val_images_per_class,
        image_size=image_size,
        seed=seed,
    ).resolve()
    expected = SYNTHETIC_EXPECTED
    return _index_folders("synthetic", folder, IMAGE_EXTENSIONS, on_bad_file, expected)
