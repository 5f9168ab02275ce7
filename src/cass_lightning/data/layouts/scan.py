"""Class folders to an index: walked safely (link loops cut, each real file once), then checked.

A reader whose labels are folder names lists its class folders with :class:`FolderScan` and
hands them to :func:`index_class_tree`, which checks them and builds the index;
:func:`check_known_classes` refuses class folders a dataset with fixed classes does not have.

Folder layouts follow symbolic links (datasets are often assembled from links into a larger
store), which opens two ways to multiply samples: a link back to an ancestor (a loop) and one
folder reached through two links. :class:`FolderScan` lists each real folder once per class
folder, and :func:`drop_duplicates` then finds every real file indexed under more than one
key: twice in the same class and split it is kept once (with a warning); in two classes or
two splits it is refused, since one image cannot carry two labels or sit in train and test.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cass_lightning.data.index import SampleIndex
from cass_lightning.data.layouts.helpers import (
    MISSING_LABELS,
    BadFiles,
    bullets,
    finish_index,
    is_dir,
    is_hidden,
    is_missing_label,
)

#: One scanned folder of classes: its official split (or None), its path relative to the root
#: ("" for the root itself) and ``{class: keys}``.
ClassFolder = tuple[str | None, str, dict[str, list[str]]]


#: The bucket of ignored files whose name has no extension.
NO_EXTENSION = "(no extension)"


def extension_of(name: str) -> str:
    """``.txt`` for ``notes.TXT``; :data:`NO_EXTENSION` for ``README``."""
    return os.path.splitext(name)[1].lower() or NO_EXTENSION


class FolderScan:
    """Lists image files under class folders (sub-folders and links followed, loops cut).

    It remembers which keys were reached via a link (``linked``) and counts the other
    (non-hidden) files it passed over, by extension (``ignored``); hand both, with the scanned
    folders, to :func:`index_class_tree`. Broken links go to ``bad`` (a ``BadFiles``).
    """

    def __init__(self, root: Path, extensions: tuple[str, ...], bad: BadFiles) -> None:
        self.root = root
        self.extensions = extensions
        self.bad = bad
        self.linked: set[str] = set()
        self.ignored: Counter[str] = Counter()

    def images(self, folder: Path, split: str | None = None, label: str = "") -> list[str]:
        """Keys of the image files under ``folder``, sub-folders included (links followed).

        Depth first in name order, so which of two links to one folder is kept never depends
        on the file system's listing order. ``split`` and ``label`` describe broken links.
        """
        found: list[str] = []
        seen: dict[str, str] = {}
        prefix = Path(os.path.relpath(folder, self.root)).as_posix()
        stack = [(str(folder), prefix)]
        while stack:
            path, key_prefix = stack.pop()
            real = os.path.realpath(path)
            via_link = real != os.path.normpath(path)  # the root is resolved: only links differ
            if real in seen:
                warnings.warn(
                    f"folder {path} is {real}, already scanned as {seen[real]} (a symbolic-link "
                    "loop or a folder linked twice); its images are indexed once",
                    stacklevel=2,
                )
                continue
            seen[real] = path
            with os.scandir(path) as listing:
                entries = sorted((e for e in listing if not is_hidden(e.name)), key=_name)
            folders = []
            for entry in entries:
                key = f"{key_prefix}/{entry.name}"
                if is_dir(entry):
                    folders.append((entry.path, key))
                elif entry.name.lower().endswith(self.extensions):
                    if entry.is_file():
                        found.append(key)
                        if via_link or entry.is_symlink():
                            self.linked.add(key)
                    else:
                        why = ("broken symbolic link" if entry.is_symlink() and not
                               os.path.exists(entry.path) else
                               "not a regular file (a FIFO, device or socket)")  # fmt: skip
                        self.bad.add(entry.path, why, split, (label,))
                else:
                    self.ignored[extension_of(entry.name)] += 1
            stack.extend(reversed(folders))
        return found

    def classes(
        self, folder: Path, names: list[str], split: str | None = None
    ) -> dict[str, list[str]]:
        """``{class: keys}`` for the class folders ``names`` in ``folder``."""
        return {name: self.images(folder / name, split, name) for name in names}


def _name(entry: os.DirEntry[str]) -> str:
    return entry.name


def drop_duplicates(
    layout: str, root: Path, folders: list[ClassFolder], linked: set[str] | None
) -> list[ClassFolder]:
    """``folders`` with each real file under one key only.

    ``linked`` names the keys reached through a symbolic link (only those can share a file
    with another key); ``None`` resolves every key.
    """
    owner: dict[str, tuple[str, str | None, str]] = {}
    repeats: dict[str, list[str]] = {}
    clashes: list[str] = []
    for split, _, by_class in folders:
        for name, keys in by_class.items():
            for key in sorted(keys):
                resolve = linked is None or key in linked
                real = os.path.realpath(root / key) if resolve else str(root / key)
                first = owner.setdefault(real, (key, split, name))
                if first[0] == key:
                    continue
                if first[1:] == (split, name):
                    repeats.setdefault(name, []).append(key)
                else:
                    clashes.append(
                        f"{first[0]} ({_where(first[1], first[2])}) and {key} "
                        f"({_where(split, name)}) are the same file {real}"
                    )
    if clashes:
        raise ValueError(
            f"{layout}: {len(clashes)} file(s) under {root} are reached through symbolic links "
            "in two classes or two splits:\n" + bullets(clashes) + "\nOne image cannot carry "
            "two labels or sit in two splits; remove the extra links."
        )
    if not repeats:
        return folders
    dropped = {key for keys in repeats.values() for key in keys}
    shown = ", ".join(sorted(dropped)[:5]) + (" ..." if len(dropped) > 5 else "")
    warnings.warn(
        f"{layout}: {len(dropped)} file(s) under {root} are reached a second time within their "
        f"class through symbolic links; each is indexed once (left out: {shown})",
        stacklevel=2,
    )
    return [
        (split, prefix, {n: [k for k in keys if k not in dropped] for n, keys in by_class.items()})
        for split, prefix, by_class in folders
    ]


def _where(split: str | None, name: str) -> str:
    return f"class {name}" if split is None else f"class {name}, split {split}"


# ------------------------------------------------------------------- class folders to an index
def index_class_tree(
    layout: str,
    root: Path,
    folders: list[ClassFolder],
    bad: BadFiles,
    expected: str,
    linked: set[str] | None,
    ignored: dict[str, int] | None = None,
) -> SampleIndex:
    """Turn scanned class folders (``(split, folder, {class: keys})``, e.g. from
    ``FolderScan.classes``) into the reader's index; classes are the sorted folder names.

    Missing files are reported first (they may be why a class looks empty); then every class
    folder must hold images and every split must have the same classes, since a missing class
    would shift every later label index. A file reached under two keys counts once (see
    :func:`drop_duplicates`; ``linked`` names the keys reached through links, ``None``: any).
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
    return finish_index(
        layout, root, keys, targets, reference, official, skipped, bad.meta, ignored
    )


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


def check_known_classes(
    layout: str, root: Path, folders: list[ClassFolder], known: Sequence[str], allow_extra: bool
) -> None:
    """For a dataset with fixed classes: refuse class folders outside ``known`` (naming them)
    unless ``allow_extra``; warn about known classes that are absent, since the label space
    then differs from the paper's. Call it on the folder names before scanning them."""
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
