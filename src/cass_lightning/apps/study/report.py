"""What a study run leaves besides its points: the report gathered from every finished point,
and the measure of the study's own cost (its time outside the points' loops)."""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

from cass_lightning.apps.study.plan import (
    FAILED_FILE,
    RESULTS_FILE,
    SUMMARY_FILE,
    Point,
    StudySettings,
    missing_rows,
)
from cass_lightning.apps.study.points import TIMING_FILE
from cass_lightning.apps.study.tracking import wants_wandb
from cass_lightning.io import first_free, read_json
from cass_lightning.machine import device_label
from cass_lightning.records import read_record
from cass_lightning.report.validate import ResultsFileError, load_result

#: When this invocation of the study started: files older than this are from earlier ones.
INVOCATION_STARTED = time.time()
_IMPORTED = time.perf_counter()


def gather(points: list[Point], study_dir: Path, statuses: dict[str, str]) -> dict[str, Any]:
    """What the report needs: fine-tuning results (labelled by the plan), pretraining costs,
    the rows with no finished run (with why), and a note per point that did not finish. A
    point whose results.json the report cannot trust (:func:`load_result`: a score out of its
    range, not a number, no metrics) is left out and named in the notes with the reason."""
    results, costs, notes = [], [], []
    unfinished: dict[tuple[str, str], list[str]] = {}
    by_id = {p.id: p for p in points}
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
            summary = read_record(folder / SUMMARY_FILE, "summary")  # checked plain JSON
            costs.append({**{k: summary.get(k) for k in (
                "fit_seconds", "images_per_s", "peak_memory_gib", "memory_kind", "epochs",
                "batch_size", "steps", "cost_comparable")}, "method": p.method, "arm": p.arm,
                "dataset": summary.get("dataset", ""),
                "device": device_label(summary.get("machine")) if summary.get("machine")
                else None})  # fmt: skip
        else:
            try:
                result = load_result(folder / RESULTS_FILE)
            except ResultsFileError as err:  # left out, by name: never averaged, no traceback
                reason = f"{p.id} left out: {err}"
                notes.append(reason)
                unfinished.setdefault((p.method, p.arm), []).append(reason)
                continue
            result["method"] = p.method
            result["results_file"] = str(folder / RESULTS_FILE)
            need = by_id.get(p.needs) if p.needs else None
            if need is not None:  # what the pretraining it fine-tunes cost (verdicts need one)
                result["pretrain_budget"] = {k: need.info.get(k) for k in ("batch_size", "epochs")}
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
            notes=gathered["notes"],
        )
        print(f"report: {out / 'study.md'} ({len(paths)} files)")
        if wants_wandb(settings):
            upload_report(out, settings, study_dir)
    else:
        print("report: none written (no point has results to report)", file=sys.stderr)
        for note in gathered["notes"][:10]:
            print(f"  {note}", file=sys.stderr)


def _csv_table(path: Path) -> tuple[list[str], list[list[Any]]]:
    """A CSV's header and rows, numbers as numbers (so wandb can plot and sort them)."""

    def cell(text: str) -> Any:
        try:
            return float(text) if text.strip() else None
        except ValueError:
            return text

    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], [[cell(c) for c in row] for row in rows[1:]]) if rows else ([], [])


def upload_report(out: Path, settings: StudySettings, study_dir: Path) -> str:
    """The report as one more run of the study's wandb project and group (``job_type``
    ``report``): ``report.csv`` and ``verdicts.csv`` as tables, the PNGs as images, the folder
    as an artifact. Online or offline as the points' runs (``WANDB_MODE``, a key, a reachable
    server); an offline run lands in ``<study>/wandb``. Returns the run's folder (empty when
    ``WANDB_MODE=disabled``)."""
    import wandb

    from cass_lightning.apps.run.loggers import (
        DEFAULT_FINISH_TIMEOUT_S,
        DEFAULT_INIT_TIMEOUT_S,
        INIT_MODES,
        choose_wandb_mode,
        sync_hint,
        wandb_timeouts,
    )
    from cass_lightning.report.study import TABLE_FILE, VERDICTS_FILE

    mode, reason = choose_wandb_mode()
    mode = INIT_MODES.get(mode, mode)
    if mode == "disabled":
        print(f"wandb: the report is not uploaded ({reason})")
        return ""
    if mode == "offline":
        print(f"wandb: the report goes offline to {study_dir / 'wandb'} ({reason}). "
              f"{sync_hint(study_dir)}")  # fmt: skip
    init: dict[str, Any] = dict(
        project=settings.wandb_project, group=study_dir.name, job_type="report",
        name=f"{study_dir.name}-{out.name}", dir=str(study_dir), reinit="finish_previous",
        config={"kind": settings.kind, "methods": settings.methods, "arms": settings.arms,
                "fractions": settings.fractions, "seeds": settings.seeds,
                "modes": settings.modes, "report": str(out)},
        settings=wandb.Settings(**wandb_timeouts(wandb.Settings, DEFAULT_INIT_TIMEOUT_S,
                                                 DEFAULT_FINISH_TIMEOUT_S)),
    )  # fmt: skip
    try:
        run = wandb.init(mode=mode, **init)
    except wandb.errors.CommError as err:  # as the points' runs: offline rather than nothing
        if mode == "offline":
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"wandb: online start failed ({first}); the report goes offline. "
              f"{sync_hint(study_dir)}")  # fmt: skip
        run = wandb.init(mode="offline", **init)
    try:
        logged: dict[str, Any] = {}
        for name, key in ((TABLE_FILE, "report/table"), (VERDICTS_FILE, "report/verdicts")):
            if (out / name).is_file():
                columns, rows = _csv_table(out / name)
                logged[key] = wandb.Table(columns=columns, data=rows)
        for png in sorted(out.glob("*.png")):
            logged[f"report/{png.stem}"] = wandb.Image(str(png))
        run.log(logged)
        artifact = wandb.Artifact(_artifact_name(f"{study_dir.name}-report"), type="study-report")
        artifact.add_dir(str(out))
        run.log_artifact(artifact)
        folder = str(run.dir)
    finally:
        run.finish()
    return folder


def _artifact_name(text: str) -> str:
    """wandb artifact names take letters, digits, ``-``, ``_`` and ``.`` only."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def seconds_since_start() -> float:
    """Wall time since this process started (from /proc on Linux: the interpreter's start and
    imports count as overhead too), else since this module was imported."""
    from cass_lightning.apps.run.runfolder import start_ticks

    ticks = start_ticks(os.getpid())
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ticks = None
    if ticks is None:
        return time.perf_counter() - _IMPORTED
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
