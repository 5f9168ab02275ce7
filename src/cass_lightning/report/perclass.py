"""Per-class F1 and confusion matrices of one table row, pooled over its seeds.

Read from the optional keys of a result: ``classes`` (names), ``per_class`` (``{"f1": [..],
"support": [..]}`` on the test split) and ``confusion`` (``[[int]]``, rows the true class,
columns the predicted one; ``None`` for multi-label data).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def _where(run: dict[str, Any]) -> str:
    return str(run.get("results_file") or f"{run.get('method')} {run.get('arm')} seed "
               f"{run.get('seed')}")  # fmt: skip


def classes_of(runs: Sequence[dict[str, Any]]) -> list[str] | None:
    """The class names the runs share (from ``classes``, else numbered from their per-class
    lists); ``None`` when no run holds per-class data. Disagreeing runs are an error."""
    found: list[str] | None = None
    for run in runs:
        names = run.get("classes")
        if names is None:
            f1 = (run.get("per_class") or {}).get("f1")
            size = len(f1) if f1 is not None else len(run.get("confusion") or [])
            names = [str(i) for i in range(size)] if size else None
        if names is None:
            continue
        names = [str(n) for n in names]
        if found is not None and names != found:
            raise ValueError(
                f"{_where(run)} names classes {names}, another run of the same row {found}"
            )
        found = names
    return found


def per_class_f1(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean F1 per class over the runs that report it (``None`` for a class none scored).

    Returns ``{"classes", "f1", "support", "n"}`` or ``None`` when no run has ``per_class``.
    """
    classes = classes_of(runs)
    scored = [r for r in runs if (r.get("per_class") or {}).get("f1") is not None]
    if not scored or classes is None:
        return None
    columns: list[list[float]] = [[] for _ in classes]
    support: list[int] | None = None
    for run in scored:
        f1 = run["per_class"]["f1"]
        if len(f1) != len(classes):
            raise ValueError(f"{_where(run)}: per_class.f1 has {len(f1)} values for "
                             f"{len(classes)} classes")  # fmt: skip
        for column, value in zip(columns, f1):
            if value is not None:
                column.append(float(value))
        support = support or run["per_class"].get("support")
    return {
        "classes": classes,
        "f1": [statistics.fmean(c) if c else None for c in columns],
        "support": [int(s) for s in support] if support else None,
        "n": len(scored),
    }


def confusion_total(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The confusion matrices of the runs summed (counts over seeds): ``{"classes", "matrix",
    "n"}``, or ``None`` when no run has one (multi-label data has none)."""
    with_matrix = [r for r in runs if r.get("confusion")]
    classes = classes_of(runs)
    if not with_matrix or classes is None:
        return None
    size = len(classes)
    total = [[0] * size for _ in range(size)]
    for run in with_matrix:
        matrix = run["confusion"]
        if len(matrix) != size or any(len(row) != size for row in matrix):
            raise ValueError(f"{_where(run)}: confusion must be {size}x{size} for classes "
                             f"{classes}")  # fmt: skip
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                total[i][j] += int(count)
    return {"classes": classes, "matrix": total, "n": len(with_matrix)}
