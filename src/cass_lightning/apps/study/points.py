"""The study's worker: runs points of a study's ``plan.json`` as jobs of a Hydra multirun.

``cass-study`` starts one worker (one per stage with a launcher such as SLURM)::

    python -m cass_lightning.apps.study.points -m study_dir=<study> point=<ids> [data_check=<dir>]

so each point is a job of Hydra's launcher: the default launcher runs them one after another in
this process (imports paid once; the first job checks the data first when asked), and
``hydra/launcher=slurm`` sends each as its own SLURM job. A job composes the point's app config
(``pretrain`` or ``finetune``) with the point's overrides, into the point's own folder, and calls
the app's task. A point that raises is recorded in its ``failed.json`` and the next point runs;
a pretraining point interrupted earlier resumes from its ``last.ckpt``; an interrupted
fine-tuning attempt is moved aside (never deleted) and the point starts again; a fine-tuning
point whose pretraining did not finish is skipped.

``plan.json`` is never run as written: the worker plans the study again from the settings
recorded in it and runs only points that match (:func:`~.plan.verified_plan`). It stops
when the ``cass-study`` that started it has ended (``parent=``: SIGTERM from Linux when the
parent dies, and a check before every point), so a killed study leaves no worker behind.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.run.console import RunStopped
from cass_lightning.apps.run.runfolder import (
    LOCK_FILE,
    holder_alive,
    read_lock,
    start_ticks,
    this_process,
)
from cass_lightning.apps.study.plan import (
    FAILED_FILE,
    STARTED_FILE,
    PlanRefused,
    Point,
    point_status,
    refuse_unsafe,
    verified_plan,
)
from cass_lightning.apps.study.settings import fraction_problems
from cass_lightning.io import atomic_write_json, first_free, read_json, utc_timestamp

TIMING_FILE = "timing.json"
STAGE_NAMES = ("pretraining", "fine-tuning")


def _set_aside(folder: Path, why: str) -> Path:
    """Move an unfinished attempt out of the point's way: ``<id>.<why>-<n>``, never deleted."""
    target = first_free(lambda n: folder.with_name(f"{folder.name}.{why}-{n}"))
    os.rename(folder, target)
    return target


def prepare_folder(point: Point, study_dir: Path) -> list[str]:
    """Make the point's folder ready for a (new) start; return extra overrides (``resume=``)."""
    folder = point.folder(study_dir)
    status = point_status(point, study_dir)
    if status == "partial" or (
        status == "failed" and point.app == "pretrain"
        and (folder / "checkpoints" / "last.ckpt").is_file()
    ):  # fmt: skip
        set_aside_failure(folder)
        return [f"resume={folder}"]
    if status in ("interrupted", "failed"):
        moved = _set_aside(folder, status)
        print(f"study: the earlier {status} attempt of {point.id} is kept as {moved.name}")
    return []


ATTEMPTS_DIR = "attempts"


def set_aside_failure(folder: Path) -> Path | None:
    """Move the point's ``failed.json`` (an earlier attempt's) into ``attempts/failed-<n>.json``:
    a finished point never shows a stale failure beside its result, and nothing is deleted."""
    failed = folder / FAILED_FILE
    if not failed.is_file():
        return None
    (folder / ATTEMPTS_DIR).mkdir(exist_ok=True)
    target = first_free(lambda n: folder / ATTEMPTS_DIR / f"failed-{n}.json")
    os.rename(failed, target)
    return target


def compose_point(point: Point, folder: Path, extra: list[str]) -> DictConfig:
    """The point's app config, composed as ``@hydra.main`` would, writing into ``folder``."""
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3",
                                   job_name=point.app):  # fmt: skip
            overrides = [*point.overrides, *point.logging, *extra]
            cfg = compose(config_name=point.app, overrides=overrides, return_hydra_config=True)
    finally:
        restore_gh_from_backup(backup)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder)
        cfg.hydra.run.dir = str(folder)
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.job.num = 0
        cfg.hydra.overrides.task = overrides
    return cfg


DATA_CHECK_REQUEST = "request.json"
DATA_REPORT = "data_report.json"


def data_check_passed(folder: Path) -> bool:
    """Whether the check in ``folder`` ran and found no problem."""
    report = folder / DATA_REPORT
    return report.is_file() and not read_json(report, "data report").get("problems")


def run_data_check(folder: Path) -> bool:
    """Index and check every image of the study's data once, with the data overrides recorded in
    ``folder/request.json``, writing the check's report there (and filling the shared cache).
    ``True`` when it passed."""
    from cass_lightning.apps.data import check

    request_file = folder / DATA_CHECK_REQUEST
    request = read_json(request_file, "data check request")
    request = request if isinstance(request, dict) else {}
    overrides = request.get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise PlanRefused(f"{request_file}: overrides must be a list of strings; nothing was run")
    fractions = request.get("fractions") or []
    if not isinstance(fractions, list) or not all(
        isinstance(f, int | float) and not isinstance(f, bool) for f in fractions
    ):
        raise PlanRefused(f"{request_file}: fractions must be a list of numbers; nothing was run")
    point = Point("data-check", "data_app", -1, "-", "-", list(overrides), "")
    refuse_unsafe([point], CONFIG_DIR)  # a file in the study folder: plain settings only
    cfg = compose_point(point, folder, [])
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        if check(cfg) != 0 or not data_check_passed(folder):
            return False
    finally:
        HydraConfig.instance().cfg = saved  # type: ignore[assignment]
    report = read_json(folder / DATA_REPORT, "data report")
    problems = fraction_problems(report, fractions)
    if problems:  # a fraction this data cannot hold: the study stops, naming it
        report["problems"] = [*report.get("problems", []), *problems]
        atomic_write_json(folder / DATA_REPORT, report)
        print("\n".join(problems), file=sys.stderr)
    return not problems


def _task(app: str) -> Callable[[DictConfig], dict[str, Any]]:
    if app == "pretrain":
        from cass_lightning.apps.pretrain import pretrain

        return pretrain
    from cass_lightning.apps.finetune import finetune

    return finetune


def run_point(point: Point, study_dir: Path) -> bool:
    """Run one point in this process; ``True`` when it finished. A failure is recorded in the
    point's ``failed.json`` (never raised), so the stage goes on with the next point."""
    folder = point.folder(study_dir)
    if point_status(point, study_dir) == "done":
        set_aside_failure(folder)
        return True
    extra = prepare_folder(point, study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    atomic_write_json(folder / STARTED_FILE, {**this_process(), "point": point.id})
    worker_config = HydraConfig.instance().cfg
    try:
        cfg = compose_point(point, folder, extra)
        HydraConfig.instance().set_config(cfg)
        result = _task(point.app)(cfg)
        ok = True
        set_aside_failure(folder)  # e.g. written by a worker that died in an earlier attempt
    except RunStopped:  # SIGINT/SIGTERM: last.ckpt is saved; the study stops here
        raise
    except Exception as err:  # recorded for the user and the report; the stage goes on
        atomic_write_json(folder / FAILED_FILE, {
            "point": point.id, "error": type(err).__name__, "message": str(err),
            "traceback": traceback.format_exc().splitlines()[-30:], "failed": utc_timestamp(),
        })  # fmt: skip
        print(f"study: point {point.id} FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        result, ok = {}, False
    finally:
        HydraConfig.instance().cfg = worker_config  # type: ignore[assignment]
    atomic_write_json(folder / TIMING_FILE, {
        "wall_seconds": time.perf_counter() - start,
        "loop_seconds": result.get("loop_seconds"),
    })  # fmt: skip
    return ok


def progress_line(
    points: list[Point], stage: int, study_dir: Path, started: float, ran: int
) -> str:
    """``points done / total`` (all, and in this stage), failures, and the time this stage
    still needs at the pace of the points this worker ran."""
    statuses = {p.id: point_status(p, study_dir) for p in points}
    done = sum(s == "done" for s in statuses.values())
    failed = sum(s == "failed" for s in statuses.values())
    in_stage = [p for p in points if p.stage == stage]
    left = sum(statuses[p.id] not in ("done", "failed") for p in in_stage)
    line = f"study: {done}/{len(points)} points done ({STAGE_NAMES[stage]}: {left} to go)"
    if failed:
        line += f", {failed} failed"
    if ran and left:
        eta = (time.perf_counter() - started) / ran * left
        line += f", about {eta / 60:.1f} min left in this stage"
    return line


#: A study's heartbeat: it touches its lock file at least this often while its workers run.
HEARTBEAT_S = 30
#: A lock not touched for this long belongs to a study that has ended (killed, host gone).
HEARTBEAT_STALE_S = 300


def parent_record(pid: int, token: str = "") -> str:
    """``<host>:<pid>-<start ticks>:<lock token>`` of the ``cass-study`` process: the worker's
    ``parent=``. The host and the token of the study folder's lock let a job on another node
    check on its study without seeing its process."""
    return f"{socket.gethostname()}:{pid}-{start_ticks(pid)}:{token}"


def _parse_parent(record: str) -> tuple[str | None, str, str]:
    parts = str(record).split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return None, str(record), ""  # <pid>-<ticks>, from an older cass-study


def parent_alive(record: str | None, study_dir: Path | None = None) -> bool:
    """Whether the ``cass-study`` in ``record`` still runs (``True`` when there is no record).

    On its own host: its process is asked. Elsewhere (a job on a compute node): the study
    folder's lock must still be held by that study (same token) and have been touched within
    :data:`HEARTBEAT_STALE_S`; the study touches it every :data:`HEARTBEAT_S` while it waits."""
    if not record:
        return True
    host, process, token = _parse_parent(record)
    if host is None or host == socket.gethostname():
        pid, _, ticks = process.partition("-")
        try:
            holder = {"pid": int(pid), "host": socket.gethostname(),
                      "start_ticks": None if ticks in ("", "None") else int(ticks)}  # fmt: skip
        except ValueError:
            return True
        return holder_alive(holder) is not False
    if study_dir is None or not token:
        return True
    lock = study_dir / LOCK_FILE
    holder = read_lock(lock)
    if holder is None or holder.get("token") != token:
        return False
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return False
    return age < HEARTBEAT_STALE_S


def die_with_parent(record: str | None) -> None:
    """Ask Linux to send this worker SIGTERM when its ``cass-study`` ends (``kill -9`` of the
    study included): the running point then saves its ``last.ckpt`` and stops. Elsewhere (or
    when the parent has already gone) :func:`parent_alive` is checked before every point."""
    if not record or sys.platform != "linux":
        return
    host, process, _ = _parse_parent(str(record))
    pid = process.partition("-")[0]
    if (host is not None and host != socket.gethostname()) or pid != str(os.getppid()):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


_PLANS: dict[str, list[Point]] = {}


def _plan(study_dir: Path) -> list[Point]:
    """The verified plan, read once per worker (every job of a local multirun shares it)."""
    key = str(study_dir)
    if key not in _PLANS:
        try:
            _PLANS[key] = verified_plan(study_dir, CONFIG_DIR)
        except PlanRefused as err:
            raise SystemExit(f"cass-study: {err}") from None
    return _PLANS[key]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="study_points")
def main(cfg: DictConfig) -> bool:
    """One job: one point of the study at ``cfg.study_dir``."""
    study_dir = Path(str(cfg.study_dir))
    parent = cfg.get("parent")
    if not _CHECKED and not _PLANS:
        die_with_parent(parent)
    if not parent_alive(parent, study_dir):
        host, process, _ = _parse_parent(str(parent))
        raise SystemExit(
            f"cass-study: the cass-study that started this worker (process "
            f"{process.partition('-')[0]}{f' on {host}' if host else ''}) has ended; stopping "
            f"before point {cfg.point}. Run the same cass-study command again to continue."
        )
    points = _plan(study_dir)
    by_id = {p.id: p for p in points}
    point = by_id.get(str(cfg.point))
    if point is None:
        raise SystemExit(f"cass-study: no point {cfg.point} in {study_dir}/plan.json")
    if cfg.get("data_check") and not _CHECKED:  # the first job checks the data, once
        _CHECKED.append(str(cfg.data_check))
        if not run_data_check(Path(str(cfg.data_check))):
            raise SystemExit(f"cass-study: the data did not pass the check ({cfg.data_check})")
    need = by_id.get(point.needs) if point.needs else None
    if need is not None and point_status(need, study_dir) != "done":
        print(f"study: {point.id} skipped: its pretraining {need.id} did not finish",
              file=sys.stderr)  # fmt: skip
        return False
    clock = _CLOCK.setdefault(f"{study_dir}:{point.stage}", [time.perf_counter(), 0])
    try:
        ok = run_point(point, study_dir)
    except RunStopped as stop:
        print(f"study: {stop.message}\nRun the same cass-study command again to continue.",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(stop.exit_code) from None
    clock[1] += 1
    print(progress_line(points, point.stage, study_dir, clock[0], clock[1]), flush=True)
    return ok


#: The data check this worker ran (at most one, before its first point).
_CHECKED: list[str] = []
#: Per worker process and stage: when its first point started and how many points it ran
#: (for the progress line).
_CLOCK: dict[str, list[float]] = {}


if __name__ == "__main__":
    main()
