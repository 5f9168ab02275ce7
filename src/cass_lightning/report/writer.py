"""Writing a report folder: the overwrite guard, report.csv, report.md and report.png."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cass_lightning.report.plots import plot
from cass_lightning.report.table import CSV_FIELDS, markdown

REPORT_FILES = ("report.csv", "report.md", "report.png")


def refuse_existing(paths: Iterable[Path]) -> None:
    """Raise before anything is written when any of ``paths`` already exists.

    A report is a record of the runs it read; a second report must not silently replace the first.
    """
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; refusing to overwrite a report. "
            "Choose another output folder (--out)"
        )


def write_csv(rows: Sequence[dict[str, Any]], path: Path, fields: Sequence[str]) -> None:
    """``rows`` as CSV with ``fields`` as the header; ``None`` (and absent keys) as empty cells."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, metric: str = "f1_macro"
) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` into ``out_dir``; return their paths.

    Refuses (before writing anything) when ``out_dir`` already holds any of them: a report is a
    record of the runs it read, and a second report must not silently replace the first.
    """
    if not rows:
        raise ValueError("no rows to report")
    out = Path(out_dir)
    paths = {name.split(".")[1]: out / name for name in REPORT_FILES}
    refuse_existing(paths.values())
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, paths["csv"], CSV_FIELDS)
    paths["md"].write_text(markdown(rows, metric))
    plot(rows, metric, paths["png"])
    return paths
