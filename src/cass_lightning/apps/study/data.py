"""The study's one check of its data: where it runs, and a stop by name when the data's files
changed since it passed (points of the old and the new data must never share a table cell)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from cass_lightning.apps.study.plan import Point, StudySettings, digest_of
from cass_lightning.apps.study.points import (
    DATA_CHECK_REQUEST,
    DATA_REPORT,
    compose_point,
    data_check_passed,
)
from cass_lightning.apps.study.settings import fraction_problems
from cass_lightning.io import atomic_write_json, read_json
from cass_lightning.walk import walk_files


def data_check_folder(settings: StudySettings, study_dir: Path) -> Path | None:
    """The folder where the study's data is checked once for all points (so the points skip
    it), with the check's overrides written in its request; ``None`` when a check with the same
    data settings passed before and the data's files are those it saw. A bad dataset stops the
    study before any training; so does a changed one (files added, removed or rewritten since
    the check: points of the old and the new data must never share a table cell), by name."""
    overrides = [*settings.data, f"model.img_size={settings.encoders['img_size']}"]
    folder = study_dir / f"data-check-{digest_of('data_app', overrides, None)[:8]}"
    record = folder / DATA_FILES
    listing = _data_listing(overrides, folder)
    if data_check_passed(folder):
        problems = fraction_problems(read_json(folder / DATA_REPORT, "data report"),
                                     settings.fractions)  # fmt: skip
        if problems:
            raise ValueError(" ".join(problems))
        if listing is not None and record.is_file():
            _refuse_changed_data(read_json(record, "data files record"), listing, study_dir)
        elif listing is not None:  # a study from before data files were recorded
            _record_data_files(record, listing)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / DATA_CHECK_REQUEST,
                      {"overrides": overrides, "fractions": list(settings.fractions)})  # fmt: skip
    if listing is not None:
        _record_data_files(record, listing)
    return folder


#: The data's files as the study's data check saw them: ``{"sha256", "root", "files"}``.
DATA_FILES = "data_files.json"


def _data_listing(overrides: list[str], folder: Path) -> dict[str, Any] | None:
    """Every file under the data root (relative path -> ``<size>-<mtime_ns>``; hidden files
    left out; linked folders followed, a link loop refused by name), or ``None`` for
    synthetic data (drawn from its seed, written by the first check: nothing a user changes)
    and a root that does not exist.

    A walk of the root rather than the dataset's index: the index needs the training stack,
    which ``cass-study`` itself never imports; every image the index can hold is a file here.
    """
    point = Point("data-check", "data_app", -1, "-", "-", list(overrides), "")
    cfg = compose_point(point, folder, [])
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        if str(cfg.data.get("_target_", "")).endswith("SyntheticDataModule"):
            return None
        root = Path(str(cfg.data.root)).expanduser().resolve()
    finally:
        HydraConfig.instance().cfg = saved  # type: ignore[assignment]
    if not root.is_dir():
        return None
    walk = walk_files(root)
    loops = [p for p in walk.loops if _is_ancestor_link(p)]
    if loops:
        raise ValueError(
            f"the study's data under {root} holds a symbolic-link loop: {loops[0]} leads back "
            f"to a folder above it ({os.path.realpath(loops[0])}); remove the link, so the data "
            "has one finite listing"
        )
    files: dict[str, str] = {}
    for path in walk.files:  # linked folders followed: the dataset reads through them too
        stat = path.stat()
        files[path.relative_to(root).as_posix()] = f"{stat.st_size}-{stat.st_mtime_ns}"
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    return {"sha256": digest, "root": str(root), "files": files}


def _is_ancestor_link(path: Path) -> bool:
    """Whether the linked folder ``path`` is one of the folders above it (a loop), rather than
    a second link to a folder listed elsewhere."""
    real = Path(os.path.realpath(path))
    return real in Path(os.path.realpath(path.parent)).parents or real == Path(
        os.path.realpath(path.parent))  # fmt: skip


def _record_data_files(record: Path, listing: dict[str, Any]) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(record, listing)


def _refuse_changed_data(old: dict[str, Any], new: dict[str, Any], study_dir: Path) -> None:
    """Stop (exit 1, by name) when the data's files differ from the recorded ones."""
    if old.get("sha256") == new["sha256"]:
        return
    before, now = old.get("files") or {}, new["files"]
    parts = []
    for what, keys in (("added", sorted(set(now) - set(before))),
                       ("removed", sorted(set(before) - set(now))),
                       ("changed", sorted(k for k in set(now) & set(before)
                                          if now[k] != before[k]))):  # fmt: skip
        if keys:
            more = f", ... {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} file(s) {what} ({', '.join(keys[:3])}{more})")
    raise ValueError(
        f"the study's data changed since its data check: {'; '.join(parts) or 'files differ'} "
        f"under {new['root']}. Points run on the old data must not be averaged with points on "
        f"the new; start a new study (study.dir=<new folder>) or restore the data as it was "
        f"(the files as checked are listed in {study_dir}/data-check-*/{DATA_FILES})"
    )
