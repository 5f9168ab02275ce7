"""Pieces every layout reader shares: constants, expected-layout texts, root and error helpers.

Each reader in this package opens its root with :func:`_open_root`, explains a root that holds
something else with :func:`_mismatch` (using the one text per layout in ``_EXPECTED``), gathers
missing files in :class:`_BadFiles` and row problems for :func:`_raise_row_errors`, reads CSVs
with :func:`_read_csv`, and builds its :class:`SampleIndex` with :func:`_finish`. Keeping them
here means every layout words its errors, lists problems and orders samples the same way.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cass_lightning.checks import check_choice
from cass_lightning.data.index import SPLITS, FileReader, SampleIndex

BAD_FILE_POLICIES = ("error", "skip")
ISIC_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC_HEADER: tuple[str, ...] = ("image", *ISIC_CLASSES, "UNK")
MEDMNIST_ARRAYS: tuple[str, ...] = tuple(
    f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")
)
#: Label cells (and class folder names) that mean "no value", refused by name, compared
#: case-insensitively: pandas writes a missing label as ``nan``, Python as ``None``.
MISSING_LABELS: tuple[str, ...] = ("nan", "none", "null")
#: Problems listed in one error message before the rest are only counted.
MAX_LISTED = 50
#: Root entries shown when a root does not fit its layout.
MAX_FOUND = 10

# What each layout expects under its root, in one place so every message says the same thing.
# Fields in braces are filled with the options of the call.
_EXPECTED: dict[str, str] = {
    "isic2019": (
        "{image_dir}/ (holding <image>.jpg) and {csv_file} "
        "(header " + ",".join(ISIC_HEADER) + ", one-hot 1.0/0.0)"
    ),
    "brain_mri": (
        "Training/<class>/<image>.jpg and Testing/<class>/<image>.jpg "
        "(classes glioma, meningioma, notumor, pituitary)"
    ),
    "dermofit": "<class>/<lesion_id>/<lesion_id>.png (e.g. BCC/B123/B123.png)",
    "autoimmune": (
        "{csv_file} with a {file_column!r} column and a list-valued {label_column!r} column "
        "(image paths relative to {image_dir})"
    ),
    "csv": "{csv_file} with columns {columns} (image paths relative to {image_dir})",
    "image_folder": (
        "<class>/<image> folders, or train/<class>/<image> (plus optional val/ and test/) "
        "with images ending in {extensions}"
    ),
    "medmnist": ("{file} (a MedMNIST .npz with arrays " + ", ".join(MEDMNIST_ARRAYS) + ")"),
    "synthetic": "a folder written by write_synthetic_dataset (train/<class>/*.png, val/...)",
}


# --------------------------------------------------------------------------- shared helpers
def _expected(layout: str, **fields: Any) -> str:
    return _EXPECTED[layout].format(**fields)


def _dir_text(image_dir: str | Path) -> str:
    return "the root folder" if str(image_dir) in ("", ".") else f"{image_dir}/"


def is_missing_label(label: str) -> bool:
    """A blank label, or one spelling a missing value (``nan``, ``NaN``, ``None``, ``null``)."""
    text = label.strip()
    return not text or text.casefold() in MISSING_LABELS


def _is_hidden(name: str) -> bool:
    """Dot files, and the resource-fork folder macOS adds to zip archives."""
    return name.startswith(".") or name == "__MACOSX"


def _check_policy(on_bad_file: str) -> None:
    check_choice("on_bad_file", on_bad_file, BAD_FILE_POLICIES)


def _bullets(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """One indented line per item, the tail only counted, so huge lists stay readable."""
    lines = [f"  - {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not _is_hidden(e.name)), key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _subdirs(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders (symlinked folders included)."""
    return [e.name for e in _visible_entries(folder) if _is_dir(e)]


def _found(root: Path) -> str:
    names = [e.name + ("/" if _is_dir(e) else "") for e in _visible_entries(root)]
    if not names:
        return "nothing"
    shown = ", ".join(names[:MAX_FOUND])
    return shown if len(names) <= MAX_FOUND else f"{shown} ... and {len(names) - MAX_FOUND} more"


def _mismatch(
    layout: str,
    root: Path,
    expected: str,
    problem: str,
    probe: Callable[[Path], bool] | None = None,
) -> ValueError:
    """The error for a root that exists but holds something else than the layout wants."""
    message = (
        f"{root} does not fit the {layout} layout: {problem}. "
        f"Expected {expected} under {root}; found there: {_found(root)}."
    )
    if probe is not None:
        # A common mistake is pointing at the folder above the extracted archive.
        nested = [root / name for name in _subdirs(root)[:100] if probe(root / name)]
        if nested:
            message += f" Did you mean root={nested[0]}?"
    return ValueError(message)


def _open_root(layout: str, root: str | Path, expected: str) -> Path:
    """The resolved root, after checking it exists, is a folder and is not empty."""
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{layout} dataset root {path} does not exist; expected {expected} under it"
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"{layout} dataset root {path} is not a folder; expected {expected} under it"
        )
    path = path.resolve()
    if not _visible_entries(path):
        raise ValueError(f"{layout} dataset root {path} is empty; expected {expected} under it")
    return path


class _BadFiles:
    """Entries that point at files which are not there, handled by the ``on_bad_file`` policy.

    Each entry may say which official split and labels it would have had, so the datamodule
    can tell the user which classes lost images where (``SampleIndex.skipped_meta``).
    """

    def __init__(self, layout: str, root: Path, policy: str) -> None:
        self.layout = layout
        self.root = root
        self.policy = policy
        self.entries: list[tuple[str, str]] = []
        self.meta: dict[str, tuple[str | None, tuple[str, ...]]] = {}

    def add(
        self, where: str, why: str, split: str | None = None, labels: Sequence[str] = ()
    ) -> None:
        self.entries.append((where, why))
        self.meta[where] = (split, tuple(labels))

    def resolve(self) -> list[tuple[str, str]]:
        """The skipped entries under ``skip``; under ``error`` one error naming all of them."""
        if self.entries and self.policy == "error":
            raise FileNotFoundError(
                f"{self.layout}: {len(self.entries)} missing file(s) under {self.root}:\n"
                + _bullets([f"{where}: {why}" for where, why in self.entries])
                + "\nRestore them, fix the paths, or pass on_bad_file='skip' to leave them out."
            )
        return list(self.entries)


def _raise_row_errors(layout: str, source: Path, errors: list[str]) -> None:
    if errors:
        raise ValueError(f"{layout}: {len(errors)} problem(s) in {source}:\n" + _bullets(errors))


class _FileLookup:
    """Answers "is this a file?" by listing each folder once, not one stat call per file."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    def _listing(self, folder: str) -> tuple[frozenset[str], frozenset[str]]:
        if folder not in self._folders:
            files: set[str] = set()
            broken: set[str] = set()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            if entry.is_file():
                                files.add(entry.name)
                            elif entry.is_symlink() and not os.path.exists(entry.path):
                                broken.add(entry.name)
                        except OSError:
                            continue
            except (FileNotFoundError, NotADirectoryError):
                pass
            self._folders[folder] = (frozenset(files), frozenset(broken))
        return self._folders[folder]

    def why_missing(self, path: str) -> str | None:
        """``None`` for an existing file, else why it is not usable."""
        folder, name = os.path.split(path)
        files, broken = self._listing(folder)
        if name in files:
            return None
        if name in broken:
            return "broken symbolic link"
        if os.path.isdir(path):
            return "is a folder, not a file"
        return "file does not exist"


def _sort_labels(labels: Iterable[str]) -> list[str]:
    """Sorted class names; all-integer names sort by value ("2" before "10")."""
    unique = set(labels)
    if unique and all(re.fullmatch(r"-?\d+", label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _read_csv(
    layout: str, path: Path, required: Sequence[str], expected_header: str
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """Position of every column and the ``(line, cells)`` rows; blank rows are dropped."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(
                    f"{layout}: {path} is empty; expected the header {expected_header}"
                )
            header = [name.strip() for name in header]
            rows: list[tuple[int, list[str]]] = []
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    rows.append((reader.line_num, cells))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{layout}: {path} is not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise ValueError(f"{layout}: {path} is not a readable CSV ({exc})") from exc
    missing = [name for name in required if name not in header]
    doubled = sorted({name for name in required if header.count(name) > 1})
    if missing or doubled:
        problem = f"missing column(s) {missing}" if missing else f"repeated column(s) {doubled}"
        raise ValueError(
            f"{layout}: {path} has {problem}; expected header {expected_header}, "
            f"found header {','.join(header)}"
        )
    errors = [
        f"line {line}: {len(cells)} fields, but the header has {len(header)}"
        for line, cells in rows
        if len(cells) != len(header)
    ]
    _raise_row_errors(layout, path, errors)
    positions: dict[str, int] = {}
    for position, name in enumerate(header):
        positions.setdefault(name, position)
    return positions, rows


def _key_for(root: Path, base: Path, path: str) -> tuple[str, bool]:
    """Key of a CSV path, and whether it lies inside the root.

    The path is normalised first (``a/../b`` is ``b``), so the file read is the one the key
    names. Inside the root the key is relative to it; a path whose folder resolves into the
    root (an absolute path spelled through a symlinked alias of the root) counts as inside.
    Outside, the key is the absolute normalised path.
    """
    full = os.path.normpath(os.path.join(base, path))
    root_text = str(root)
    prefix = root_text.rstrip(os.sep) + os.sep
    if full.startswith(prefix):
        return Path(os.path.relpath(full, root_text)).as_posix(), True
    folder, name = os.path.split(full)
    real_folder = os.path.realpath(folder)
    if real_folder == root_text or real_folder.startswith(prefix):
        return Path(os.path.relpath(os.path.join(real_folder, name), root_text)).as_posix(), True
    return Path(full).as_posix(), False


def _outside_root(what: str, path: str, key: str, root: Path) -> str:
    """The message for a path (a CSV cell or an option) that leaves the dataset root."""
    return (
        f"{what} {path!r} leaves the dataset root {root} (it points at {key}); refused so "
        "that a CSV cannot read files elsewhere. Move the file under the root, or set "
        "data.allow_outside_root=true to read it"
    )


def _check_image_dir(layout: str, root: Path, image_dir: str, allow_outside_root: bool) -> Path:
    """The image folder ``root/image_dir``; an ``image_dir`` leaving the root is refused."""
    _, inside = _key_for(root, root, os.path.join(str(image_dir), "_"))
    if not inside and not allow_outside_root:
        full = os.path.normpath(os.path.join(root, image_dir))
        raise ValueError(f"{layout}: " + _outside_root("option image_dir", image_dir, full, root))
    return root / image_dir


def _finish(
    name: str,
    root: Path,
    keys: list[str],
    targets: np.ndarray,
    classes: list[str],
    splits: list[str] | None,
    skipped: list[tuple[str, str]],
    skipped_meta: dict[str, tuple[str | None, tuple[str, ...]]] | None = None,
    ignored: dict[str, int] | None = None,
) -> SampleIndex:
    """Sort by key and build the index; an index left with no samples is an error."""
    if not keys:
        raise ValueError(
            f"{name}: no samples left under {root} after leaving out {len(skipped)} missing "
            "file(s); check the paths"
        )
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return SampleIndex(
        name=name,
        root=root,
        keys=[keys[i] for i in order],
        targets=targets[order],
        classes=classes,
        reader=FileReader(root),
        splits=None if splits is None else np.array([splits[i] for i in order], dtype=object),
        skipped=skipped,
        skipped_meta=dict(skipped_meta or {}),
        ignored=dict(sorted((ignored or {}).items())),
    )
