"""Every regular file under a folder, links followed, each real folder listed once.

Images handed over between labs are often folders of links into a larger store. Following the
links is what a user means; two things must not follow from it: a link back to an ancestor (a
loop, which would list the same files again and again) and a file that is not a file (a FIFO
or a device named ``x.png``, which blocks whoever opens it). :func:`walk_files` lists the
regular files and names the folders it did not enter again and the entries it did not list.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Walk:
    """What :func:`walk_files` found: ``files`` (regular files, sorted depth first), ``loops``
    (linked folders already listed: a loop or a second link to one folder) and ``special``
    (entries that are not regular files: FIFOs, devices, sockets, broken links, folders that
    cannot be listed)."""

    files: list[Path] = field(default_factory=list)
    loops: list[Path] = field(default_factory=list)
    special: list[Path] = field(default_factory=list)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def is_regular(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is (or links to) a regular file: opening it cannot block."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def walk_files(
    root: str | os.PathLike[str],
    wanted: Callable[[str], bool] = lambda name: True,
    hidden: bool = False,
) -> Walk:
    """The files under ``root`` whose name is ``wanted``, links to folders followed (each real
    folder entered once), hidden names left out unless ``hidden``."""
    found = Walk()
    top = Path(root)
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
        except OSError:
            found.special.append(folder)
            continue
        if (info.st_dev, info.st_ino) in seen:
            found.loops.append(folder)
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if hidden or not _hidden(e.name)),
                                 key=lambda e: e.name)  # fmt: skip
        except OSError:  # a folder this user may not list: skipped, and said
            found.special.append(folder)
            continue
        folders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                folders.append(path)
            elif wanted(entry.name):
                (found.files if is_regular(path) else found.special).append(path)
        stack.extend(reversed(folders))
    return found
