"""Readers for each dataset's on-disk layout, each returning one :class:`SampleIndex`.

The datasets arrive in the shape their distributors chose (ISIC's one-hot CSV, Kaggle's
``Training``/``Testing`` folders, Dermofit's lesion folders, MedMNIST's ``.npz``...). Each reader
here only *lists* what is there: no image is decoded (the validator does that through
``index.reader``), and nothing is ever written under a dataset root.

Shared rules:

- Keys are paths relative to the root, in posix style (MedMNIST: ``"<split>/<row>"``); samples
  are sorted by key, so the same files always give the same order.
- ``on_bad_file`` decides what happens to entries that point at files which are not there:
  ``"error"`` raises one error listing every one of them, ``"skip"`` drops them and records
  ``(where, why)`` in ``index.skipped``. Structure errors (wrong or empty root, bad CSV header,
  unknown labels, classes without images) always raise, because skipping them would silently
  change the label space.
- Hidden files and folders are ignored; extensions are matched case-insensitively.
"""

from __future__ import annotations

import ast
import csv
import inspect
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cass_lightning.data.datasets import DEFAULT_EXTENSIONS
from cass_lightning.data.index import SPLITS, FileReader, SampleIndex
from cass_lightning.data.synthetic import write_synthetic_dataset

BAD_FILE_POLICIES = ("error", "skip")
ISIC_CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
ISIC_HEADER: tuple[str, ...] = ("image", *ISIC_CLASSES, "UNK")
MEDMNIST_ARRAYS: tuple[str, ...] = tuple(
    f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")
)
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


def _is_hidden(name: str) -> bool:
    """Dot files, and the resource-fork folder macOS adds to zip archives."""
    return name.startswith(".") or name == "__MACOSX"


def _check_policy(on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}")


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
    """Entries that point at files which are not there, handled by the ``on_bad_file`` policy."""

    def __init__(self, layout: str, root: Path, policy: str) -> None:
        self.layout = layout
        self.root = root
        self.policy = policy
        self.entries: list[tuple[str, str]] = []

    def add(self, where: str, why: str) -> None:
        self.entries.append((where, why))

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


def _key_for(root: Path, base: Path, path: str) -> str:
    """Key of a CSV path: relative to the root when inside it, else the absolute path."""
    full = os.path.normpath(os.path.join(base, path))
    root_text = str(root)
    if full.startswith(root_text.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(full, root_text)).as_posix()
    return Path(full).as_posix()


def _finish(
    name: str,
    root: Path,
    keys: list[str],
    targets: np.ndarray,
    classes: list[str],
    splits: list[str] | None,
    skipped: list[tuple[str, str]],
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
    )


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


# --------------------------------------------------------------------------- CSV layouts
def _parse_one_hot(
    cells: list[str], columns: dict[str, int], names: Sequence[str], blank_is_zero: Sequence[str]
) -> tuple[list[str], str | None]:
    """The columns holding a 1, or why the row is not a 0/1 row."""
    ones: list[str] = []
    for name in names:
        cell = cells[columns[name]].strip()
        if not cell and name in blank_is_zero:
            continue
        try:
            value = float(cell)
        except ValueError:
            value = float("nan")
        if value not in (0.0, 1.0):
            return [], f"column {name} is {cell!r}; expected 1.0 or 0.0"
        if value == 1.0:
            ones.append(name)
    return ones, None


def index_isic2019(
    root: str | Path,
    *,
    on_bad_file: str = "error",
    image_dir: str = "ISIC_2019_Training_Input",
    csv_file: str = "ISIC_2019_Training_GroundTruth.csv",
) -> SampleIndex:
    """ISIC-2019 as distributed: the training images and the one-hot ground-truth CSV.

    Images are looked up by the CSV's ``image`` column plus ``.jpg``, so the licence files and
    any ``_downsampled`` copies in the image folder are never picked up by accident. The UNK
    column is optional and may be blank; a 1 there is an unknown label (the training data has
    none).
    """
    layout = "isic2019"
    _check_policy(on_bad_file)
    expected = _expected(layout, image_dir=image_dir, csv_file=csv_file)
    root = _open_root(layout, root, expected)
    csv_path = root / csv_file
    absent = [
        name
        for name, present in (
            (f"{image_dir}/", (root / image_dir).is_dir()),
            (csv_file, csv_path.is_file()),
        )
        if not present
    ]
    if absent:
        raise _mismatch(
            layout,
            root,
            expected,
            f"{' and '.join(absent)} not found",
            probe=lambda p: (p / csv_file).is_file() and (p / image_dir).is_dir(),
        )
    columns, rows = _read_csv(layout, csv_path, ["image", *ISIC_CLASSES], ",".join(ISIC_HEADER))
    if not rows:
        raise ValueError(f"{layout}: {csv_path} has a header but no rows")
    one_hot_columns = [*ISIC_CLASSES, *(["UNK"] if "UNK" in columns else [])]

    bad = _BadFiles(layout, root, on_bad_file)
    lookup = _FileLookup()
    errors: list[str] = []
    first_line: dict[str, int] = {}
    keys: list[str] = []
    labels: list[int] = []
    for line, cells in rows:
        image = cells[columns["image"]].strip()
        if not image:
            errors.append(f"line {line}: empty 'image' cell")
            continue
        where = f"line {line} (image {image})"
        ones, problem = _parse_one_hot(cells, columns, one_hot_columns, blank_is_zero=["UNK"])
        if problem is not None:
            errors.append(f"{where}: {problem}")
            continue
        if "UNK" in ones:
            errors.append(
                f"{where}: unknown label (UNK=1); expected exactly one of {', '.join(ISIC_CLASSES)}"
            )
            continue
        if len(ones) != 1:
            errors.append(
                f"{where}: one-hot row has {len(ones)} ones ({', '.join(ones) or 'none'}); "
                "expected exactly one"
            )
            continue
        if image in first_line:
            errors.append(f"{where}: listed again (first at line {first_line[image]})")
            continue
        first_line[image] = line
        filename = image if image.lower().endswith(DEFAULT_EXTENSIONS) else f"{image}.jpg"
        key = Path(image_dir, filename).as_posix()
        why = lookup.why_missing(str(root / key))
        if why is not None:
            bad.add(str(root / key), f"{why} (listed at {csv_file} line {line})")
            continue
        keys.append(key)
        labels.append(ISIC_CLASSES.index(ones[0]))
    _raise_row_errors(layout, csv_path, errors)
    skipped = bad.resolve()
    targets = np.asarray(labels, dtype=np.int64)
    return _finish(layout, root, keys, targets, list(ISIC_CLASSES), None, skipped)


def _parse_label_list(cell: str, separators: Sequence[str]) -> tuple[list[str], str | None]:
    """Labels of a multi-label cell: a list literal, or names joined by a separator."""
    text = cell.strip()
    if not text:
        return [], None
    if text[0] in "[(":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return [], f"could not read the label list {text!r}; expected e.g. ['a', 'b']"
        if not isinstance(value, (list, tuple)) or any(
            isinstance(item, bool) or not isinstance(item, (str, int)) for item in value
        ):
            return [], f"label list {text!r} must hold names (or integers)"
        labels = [str(item).strip() for item in value]
    else:
        labels = [part.strip() for part in re.split("|".join(map(re.escape, separators)), text)]
    return list(dict.fromkeys(label for label in labels if label)), None


def _class_list(layout: str, classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str) or not classes:
        raise ValueError(f"{layout}: classes must be a non-empty list of names, got {classes!r}")
    names = [str(name) for name in classes]
    doubled = sorted({name for name in names if names.count(name) > 1})
    if doubled:
        raise ValueError(f"{layout}: classes lists {doubled} more than once")
    return names


def _index_table(
    layout: str,
    root: str | Path,
    *,
    csv_file: str,
    path_column: str,
    label_column: str,
    multi_label: bool,
    separators: Sequence[str],
    classes: Sequence[str] | None,
    split_column: str | None,
    image_dir: str,
    on_bad_file: str,
    expected: str,
) -> SampleIndex:
    """One CSV row per image: a path, a label (or a list of labels) and maybe a split."""
    _check_policy(on_bad_file)
    known = None if classes is None else _class_list(layout, classes)
    required = [path_column, label_column, *([split_column] if split_column else [])]
    if len(set(required)) != len(required):
        raise ValueError(f"{layout}: the path, label and split columns must differ, got {required}")
    resolved = _open_root(layout, root, expected)
    csv_path = resolved / csv_file
    if not csv_path.is_file():
        raise _mismatch(
            layout,
            resolved,
            expected,
            f"{csv_file} not found",
            probe=lambda p: (p / csv_file).is_file(),
        )
    base = resolved / image_dir
    if not base.is_dir():
        raise _mismatch(layout, resolved, expected, f"image folder {image_dir}/ not found")
    columns, rows = _read_csv(layout, csv_path, required, ",".join(required))
    if not rows:
        raise ValueError(f"{layout}: {csv_path} has a header but no rows")

    bad = _BadFiles(layout, resolved, on_bad_file)
    lookup = _FileLookup()
    errors: list[str] = []
    first_line: dict[str, int] = {}
    seen: set[str] = set()
    entries: list[tuple[str, list[str], str | None]] = []
    for line, cells in rows:
        path = cells[columns[path_column]].strip()
        if not path:
            errors.append(f"line {line}: empty {path_column!r} cell; expected an image path")
            continue
        where = f"line {line} ({path})"
        cell = cells[columns[label_column]]
        if multi_label:
            labels, problem = _parse_label_list(cell, separators)
            if problem is not None:
                errors.append(f"{where}: column {label_column!r}: {problem}")
                continue
        elif not cell.strip():
            errors.append(f"{where}: empty {label_column!r} cell; expected a class name")
            continue
        else:
            labels = [cell.strip()]
        if known is not None:
            unknown = [label for label in labels if label not in known]
            if unknown:
                errors.append(f"{where}: unknown label(s) {unknown}; expected one of {known}")
                continue
        split = None
        if split_column is not None:
            raw = cells[columns[split_column]].strip()
            split = raw.lower()
            if split not in SPLITS:
                errors.append(
                    f"{where}: split {raw!r} in column {split_column!r}; "
                    f"expected one of {', '.join(SPLITS)}"
                )
                continue
        key = _key_for(resolved, base, path)
        if key in first_line:
            errors.append(f"{where}: listed again (first at line {first_line[key]})")
            continue
        first_line[key] = line
        # Classes come from every well-formed row, so a missing file never shifts label indices.
        seen.update(labels)
        why = lookup.why_missing(str(resolved / key))
        if why is not None:
            bad.add(str(resolved / key), f"{why} (listed at {csv_file} line {line})")
            continue
        entries.append((key, labels, split))
    _raise_row_errors(layout, csv_path, errors)
    names = known if known is not None else _sort_labels(seen)
    if not names:
        raise ValueError(
            f"{layout}: no labels at all in column {label_column!r} of {csv_path}; "
            "expected at least one labelled row"
        )
    skipped = bad.resolve()
    position = {name: i for i, name in enumerate(names)}
    if multi_label:
        targets = np.zeros((len(entries), len(names)), dtype=np.float32)
        for row, (_, labels, _) in enumerate(entries):
            targets[row, [position[label] for label in labels]] = 1.0
    else:
        targets = np.asarray([position[labels[0]] for _, labels, _ in entries], dtype=np.int64)
    keys = [key for key, _, _ in entries]
    splits = None if split_column is None else [split or "" for _, _, split in entries]
    return _finish(layout, resolved, keys, targets, names, splits, skipped)


def index_autoimmune(
    root: str | Path,
    *,
    csv_file: str = "labels.csv",
    image_dir: str = ".",
    file_column: str = "file",
    label_column: str = "label",
    on_bad_file: str = "error",
) -> SampleIndex:
    """The dermatomyositis biopsies: multi-label, one CSV row per image with a list of labels.

    The label cell may be a list literal (``"['a', 'b']"``, ``'["a"]'``, ``"[]"``) or names
    joined by ``|`` or ``;``; an empty list is an image without labels.
    """
    expected = _expected(
        "autoimmune",
        csv_file=csv_file,
        file_column=file_column,
        label_column=label_column,
        image_dir=_dir_text(image_dir),
    )
    return _index_table(
        "autoimmune",
        root,
        csv_file=csv_file,
        path_column=file_column,
        label_column=label_column,
        multi_label=True,
        separators=("|", ";"),
        classes=None,
        split_column=None,
        image_dir=image_dir,
        on_bad_file=on_bad_file,
        expected=expected,
    )


def index_csv(
    root: str | Path,
    *,
    csv_file: str,
    path_column: str = "path",
    label_column: str = "label",
    multi_label: bool = False,
    label_separator: str = "|",
    classes: Sequence[str] | None = None,
    split_column: str | None = None,
    image_dir: str = ".",
    on_bad_file: str = "error",
) -> SampleIndex:
    """Your own CSV: an image path (relative to ``root/image_dir``, or absolute) and a label.

    With ``classes`` the label space is fixed (in that order) and anything else is an error;
    without, it is the sorted set of labels seen. ``multi_label`` cells are list literals or
    names joined by ``label_separator``. A ``split_column`` holds train/val/test per row.
    """
    if not isinstance(label_separator, str) or not label_separator:
        raise ValueError(
            f"csv: label_separator must be a non-empty string, got {label_separator!r}"
        )
    columns = [path_column, label_column, *([split_column] if split_column else [])]
    expected = _expected(
        "csv",
        csv_file=csv_file,
        columns=", ".join(map(repr, columns)),
        image_dir=_dir_text(image_dir),
    )
    return _index_table(
        "csv",
        root,
        csv_file=csv_file,
        path_column=path_column,
        label_column=label_column,
        multi_label=multi_label,
        separators=(label_separator,),
        classes=classes,
        split_column=split_column,
        image_dir=image_dir,
        on_bad_file=on_bad_file,
        expected=expected,
    )


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
        by_class = _scan_classes(resolved, resolved / name, DEFAULT_EXTENSIONS, bad)
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
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
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
    return _index_folders("synthetic", folder, DEFAULT_EXTENSIONS, on_bad_file, expected)


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


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The six MedMNIST arrays, read into memory; a missing array raises naming it."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"medmnist: could not read {path} as an .npz archive ({exc})") from exc
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
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"medmnist: {path} is damaged ({exc})") from exc


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

    Labels of shape ``(N, 1)`` are multi-class, ``(N, C)`` with C > 1 multi-label (ChestMNIST).
    Splits are the official train/val/test arrays. ``on_bad_file`` is accepted for a uniform
    interface; an array cannot point at a missing file.
    """
    _check_policy(on_bad_file)
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
    expected = _expected("medmnist", file=" or ".join(candidates))
    resolved = _open_root("medmnist", root, expected)
    path = next((resolved / c for c in candidates if (resolved / c).is_file()), None)
    if path is None:
        present = [e.name for e in _visible_entries(resolved) if e.name.lower().endswith(".npz")]
        raise FileNotFoundError(
            f"medmnist: {resolved / candidates[0]} not found; .npz files in {resolved}: "
            f"{present or 'none'}. Expected {expected} under {resolved}"
        )
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


# --------------------------------------------------------------------------- entry point
LAYOUTS: dict[str, Callable[..., SampleIndex]] = {
    "isic2019": index_isic2019,
    "brain_mri": index_brain_mri,
    "dermofit": index_dermofit,
    "autoimmune": index_autoimmune,
    "csv": index_csv,
    "image_folder": index_image_folder,
    "medmnist": index_medmnist,
    "synthetic": index_synthetic,
}


def build_index(layout: str, root: str | Path, **options: Any) -> SampleIndex:
    """Index ``root`` with the reader of ``layout``; options go to that reader.

    Option names are checked here so a typo fails with the list of accepted options rather
    than a bare ``TypeError``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {', '.join(sorted(LAYOUTS))}")
    function = LAYOUTS[layout]
    parameters = dict(inspect.signature(function).parameters)
    parameters.pop("root")
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"layout {layout!r} does not take option(s) {unknown}; it takes {sorted(parameters)}"
        )
    needed = sorted(
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and name not in options
    )
    if needed:
        raise ValueError(f"layout {layout!r} needs option(s) {needed}")
    return function(root, **options)
