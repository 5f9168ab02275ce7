"""What a study run leaves besides its points: the report gathered from every finished point,
and the measure of the study's own cost (its time outside the points' loops)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cass_lightning.apps.study_plan import (
    FAILED_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    Point,
    StudySettings,
    missing_rows,
)
from cass_lightning.apps.study_points import TIMING_FILE
from cass_lightning.io import first_free, read_json

#: When this invocation of the study started: files older than this are from earlier ones.
INVOCATION_STARTED = time.time()
_IMPORTED = time.perf_counter()


def gather(points: list[Point], study_dir: Path, statuses: dict[str, str]) -> dict[str, Any]:
    """What the report needs: fine-tuning results (labelled by the plan), pretraining costs,
    the rows with no finished run (with why), and a note per point that did not finish."""
    results, costs, notes = [], [], []
    unfinished: dict[tuple[str, str], list[str]] = {}
    for p in points:
        folder = p.folder(study_dir)
        if statuses[p.id] != "done":
            reason = f"{p.id} {statuses[p.id]}"
            if statuses[p.id] == "failed":
                failure = read_json(folder / FAILED_FILE, "failure record")
                reason += f" ({failure.get('error')}: {failure.get('message')})"
            notes.append(reason)
            unfinished.setdefault((p.method, p.arm), []).append(reason)
            continue
        if p.app == "pretrain":
            summary = read_json(folder / SUMMARY_FILE, "pretraining summary")
            costs.append({**{k: summary.get(k) for k in (
                "fit_seconds", "images_per_s", "peak_memory_gib", "memory_kind", "epochs",
                "batch_size", "steps", "cost_comparable")}, "method": p.method, "arm": p.arm,
                "dataset": summary.get("dataset", "")})  # fmt: skip
        else:
            result = read_json(folder / RESULTS_FILE, "fine-tuning results")
            result["method"] = p.method
            if "grid_batch_size" in p.info:
                result["pretrain"] = {"batch_size": p.info["grid_batch_size"],
                                      "epochs": p.info["grid_epochs"]}  # fmt: skip
            results.append(result)
    done_rows = {(r["method"], r["arm"]) for r in results}
    missing = [{"method": m, "arm": a, "reason": "no point finished: " + "; ".join(why[:3])}
               for (m, a), why in unfinished.items() if (m, a) not in done_rows
               and a != "both"]  # fmt: skip
    dataset = next((r["dataset"] for r in results), "")
    for cost in costs:
        cost["dataset"] = cost["dataset"] or dataset
    return {"results": results, "costs": costs, "missing": missing, "notes": notes}


def free_report_dir(study_dir: Path) -> Path:
    """``report/``, or ``report-<n>/`` when an earlier invocation wrote one (never overwritten)."""
    first = study_dir / "report"
    return first if not first.exists() else first_free(lambda n: study_dir / f"report-{n}", 2)


def overhead(points: list[Point], study_dir: Path, wall: float) -> dict[str, float]:
    """The study's time outside the points' training and evaluation loops, in this invocation."""
    loops = 0.0
    for p in points:
        timing = p.folder(study_dir) / TIMING_FILE
        if timing.is_file() and timing.stat().st_mtime >= INVOCATION_STARTED:
            loops += float(read_json(timing, "timing").get("loop_seconds") or 0.0)
    return {"wall_seconds": wall, "loop_seconds": loops, "overhead_seconds": wall - loops,
            "overhead_fraction": (wall - loops) / wall if wall > 0 else 0.0}  # fmt: skip


def write_report(
    settings: StudySettings, points: list[Point], study_dir: Path, statuses: dict[str, str]
) -> None:
    """The study's report from every finished point, in a new folder beside earlier ones."""
    from cass_lightning.report import write_study_report

    gathered = gather(points, study_dir, statuses)
    if gathered["results"]:
        out = free_report_dir(study_dir)
        paths = write_study_report(
            gathered["results"],
            gathered["costs"],
            out,
            missing=[*missing_rows(settings), *gathered["missing"]],
        )
        print(f"report: {out / 'study.md'} ({len(paths)} files)")


def seconds_since_start() -> float:
    """Wall time since this process started (from /proc on Linux: the interpreter's start and
    imports count as overhead too), else since this module was imported."""
    from cass_lightning.apps.common import start_ticks

    ticks = start_ticks(os.getpid())
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ticks = None
    if ticks is None:
        return time.perf_counter() - _IMPORTED
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
