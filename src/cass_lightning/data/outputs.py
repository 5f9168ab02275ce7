"""What a datamodule's setup leaves for the user: files in the run folder, lines on stderr.

``splits.csv`` says where every indexed sample went (``excluded`` for unreadable ones) and
with which ``label_seed`` the labelled subset was drawn; ``data_report.json`` holds the report;
``skipped.csv`` lists what ``on_bad_file=skip`` left out. Nothing is written under a dataset
root: ``out`` is the run folder.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cass_lightning.data.index import SampleIndex
from cass_lightning.data.removal import format_removed
from cass_lightning.data.splits import write_split_csv
from cass_lightning.data.validate import DataReport
from cass_lightning.io import atomic_write_json, write_csv


def write_outputs(
    out: Path,
    index: SampleIndex,
    splits: np.ndarray,
    labelled: np.ndarray,
    report: DataReport,
    label_seed: int,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """``splits.csv``, ``data_report.json`` and, when something was left out, ``skipped.csv``.

    ``fingerprint`` (:func:`~cass_lightning.data.fingerprint.dataset_fingerprint`) goes into
    ``data_report.json``, so a report or a study can tell two versions of a dataset apart.
    """
    write_split_csv(index, splits, labelled, out / "splits.csv", label_seed)
    if fingerprint is None:
        report.write(out / "data_report.json")
    else:
        record = {**report.as_dict(), "fingerprint": fingerprint}
        atomic_write_json(out / "data_report.json", record)
    if report.removed.get("images"):
        write_csv(out / "skipped.csv", ["file", "reason"], report.bad_files + report.skipped)


def tell(report: DataReport) -> None:
    """Print what was left out per split and class, and warn about every emptied class."""
    lines = format_removed(report.removed)
    if lines:
        print(f"{report.dataset}: " + "\n".join(lines), file=sys.stderr)
    for message in report.warnings:
        warnings.warn(f"{report.dataset}: {message}", stacklevel=3)
