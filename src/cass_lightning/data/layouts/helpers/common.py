"""The helpers every layout reader uses: the root, folders, missing files, problems, paths, the
index. Import them from :mod:`cass_lightning.data.layouts.helpers`, which names them all."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from cass_lightning.checks import check_choice
from cass_lightning.data.index import FileReader, SampleIndex

BAD_FILE_POLICIES = ("error", "skip")
#: Label cells (and class folder names) that mean "no value", refused by name, compared
#: case-insensitively: pandas writes a missing label as ``nan``, Python as ``None``.
MISSING_LABELS: tuple[str, ...] = ("nan", "none", "null")
#: Problems listed in one error message before the rest are only counted.
MAX_LISTED = 50
#: Root entries shown when a root does not fit its layout.
MAX_FOUND = 10


# --------------------------------------------------------------------------- options and names
def check_policy(on_bad_file: str) -> None:
    """Refuse an ``on_bad_file`` other than ``error`` or ``skip``; call it first in a reader."""
    check_choice("on_bad_file", on_bad_file, BAD_FILE_POLICIES)


def dir_text(image_dir: str | Path) -> str:
    """How an ``image_dir`` option reads in a message: ``the root folder`` for ``.``."""
    return "the root folder" if str(image_dir) in ("", ".") else f"{image_dir}/"


def is_missing_label(label: str) -> bool:
    """A blank label, or one spelling a missing value (``nan``, ``NaN``, ``None``, ``null``);
    refuse such labels, which would otherwise become classes of their own."""
    text = label.strip()
    return not text or text.casefold() in MISSING_LABELS


def sort_labels(labels: Iterable[str]) -> list[str]:
    """The class list of labels read from a file: sorted, and all-integer names by value
    ("2" before "10"), so the same labels always give the same label indices."""
    unique = set(labels)
    if unique and all(re.fullmatch(r"-?\d+", label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def bullets(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """One indented line per problem, the tail only counted: use it to list many problems in
    one error, so the user fixes them all at once and huge lists stay readable."""
    lines = [f"  - {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- folders
def is_hidden(name: str) -> bool:
    """Dot files, and the resource-fork folder macOS adds to zip archives: never indexed."""
    return name.startswith(".") or name == "__MACOSX"


def visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` a reader should look at: hidden ones left out, name order."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not is_hidden(e.name)), key=lambda e: e.name)


def is_dir(entry: os.DirEntry[str]) -> bool:
    """Whether an entry is a folder (links followed); ``False`` where it cannot be read."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def subdirs(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders (symlinked folders included): class or split
    folders, for example."""
    return [e.name for e in visible_entries(folder) if is_dir(e)]


def _found(root: Path) -> str:
    names = [e.name + ("/" if is_dir(e) else "") for e in visible_entries(root)]
    if not names:
        return "nothing"
    shown = ", ".join(names[:MAX_FOUND])
    return shown if len(names) <= MAX_FOUND else f"{shown} ... and {len(names) - MAX_FOUND} more"


def open_root(layout: str, root: str | Path, expected: str) -> Path:
    """The resolved root, after checking it exists, is a folder and is not empty; call it first.

    ``expected`` says what the layout wants under its root (the reader's own text, e.g.
    ``"<class>/<image> folders"``); every error then says it.
    """
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
    if not visible_entries(path):
        raise ValueError(f"{layout} dataset root {path} is empty; expected {expected} under it")
    return path


def mismatch(
    layout: str,
    root: Path,
    expected: str,
    problem: str,
    probe: Callable[[Path], bool] | None = None,
) -> ValueError:
    """The error to raise for a root that exists but holds something else than the layout
    wants: the problem, what was expected and what is there. ``probe`` tells whether a folder
    would fit; a sub-folder that does is suggested (the root one level too high)."""
    message = (
        f"{root} does not fit the {layout} layout: {problem}. "
        f"Expected {expected} under {root}; found there: {_found(root)}."
    )
    if probe is not None:
        nested = [root / name for name in subdirs(root)[:100] if probe(root / name)]
        if nested:
            message += f" Did you mean root={nested[0]}?"
    return ValueError(message)


# --------------------------------------------------------------------------- entries and rows
class BadFiles:
    """Entries that point at files which are not there, handled by the ``on_bad_file`` policy.

    ``add`` each one as it is found and call ``resolve`` once all are known: under ``error`` it
    raises one error naming every one, under ``skip`` it returns them for ``finish_index``. An
    entry may say which split and labels it would have had, so the datamodule can tell which
    classes lost images where (``SampleIndex.skipped_meta``).
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
                + bullets([f"{where}: {why}" for where, why in self.entries])
                + "\nRestore them, fix the paths, or pass on_bad_file='skip' to leave them out."
            )
        return list(self.entries)


def raise_row_errors(layout: str, source: Path, errors: list[str]) -> None:
    """Raise one error listing every problem found in ``source`` (``"line 3: ..."``), if any:
    collect row problems while reading, then call this once."""
    if errors:
        raise ValueError(f"{layout}: {len(errors)} problem(s) in {source}:\n" + bullets(errors))


class FileLookup:
    """Answers "is this file there?" for paths read from a table, listing each folder once
    instead of one stat call per file (fast on network file systems)."""

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
        """``None`` for an existing file, else why it is not usable (for ``BadFiles.add``)."""
        folder, name = os.path.split(path)
        files, broken = self._listing(folder)
        if name in files:
            return None
        if name in broken:
            return "broken symbolic link"
        if os.path.isdir(path):
            return "is a folder, not a file"
        return "file does not exist"


# --------------------------------------------------------------------------- paths
def key_for(root: Path, base: Path, path: str) -> tuple[str, bool]:
    """Key of a path read from a file (relative to ``base``, or absolute), and whether it lies
    inside the root: refuse it when outside, unless the user allowed that (``outside_root``).

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


def outside_root(what: str, path: str, key: str, root: Path) -> str:
    """The message for a path (a table cell or an option) that leaves the dataset root."""
    return (
        f"{what} {path!r} leaves the dataset root {root} (it points at {key}); refused so "
        "that a CSV cannot read files elsewhere. Move the file under the root, or set "
        "data.allow_outside_root=true to read it"
    )


def check_image_dir(layout: str, root: Path, image_dir: str, allow_outside_root: bool) -> Path:
    """The image folder ``root/image_dir`` that table paths are relative to; an ``image_dir``
    leaving the root is refused unless ``allow_outside_root``."""
    _, inside = key_for(root, root, os.path.join(str(image_dir), "_"))
    if not inside and not allow_outside_root:
        full = os.path.normpath(os.path.join(root, image_dir))
        raise ValueError(f"{layout}: " + outside_root("option image_dir", image_dir, full, root))
    return root / image_dir


# --------------------------------------------------------------------------- the index
def finish_index(
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
    """The reader's result: samples sorted by key (the same files always give the same order)
    with their targets (class indices, or a 0/1 matrix for multi-label), classes, official
    splits (or ``None``), the skipped entries of ``BadFiles`` and the counts of ignored files.
    An index left with no samples is an error."""
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
