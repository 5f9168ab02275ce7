"""``cass-study``: the paper's study (CASS, DINO, ImageNet and random baselines -> fine-tuning grid
-> report with a verdict) as one resumable command; a study is a folder with ``plan.json``.

    cass-study study=smoke
    cass-study study=paper data=isic2019 data.root=/data/ISIC2019 \\
        study.weights.cnn=resnet50.safetensors study.weights.vit=vit_b16_384.safetensors

The study lives in ``runs/study/<name>/``: ``plan.json`` (every point: app, overrides, digest,
status), ``points/<id>/`` (each an ordinary cass-pretrain or cass-finetune run folder) and
``report/``. Points go through Hydra's launcher in a worker, ``python -m
cass_lightning.apps.study.points -m point=...`` (one for the whole study here, one per stage
with a launcher such as SLURM). Run the same command again to finish an interrupted or partly
failed study.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.run.console import entry_point, reported_errors
from cass_lightning.apps.run.overrides import override_key, quote
from cass_lightning.apps.run.runfolder import LOCK_FILE, RunFolderBusy, claim_run_folder, read_lock
from cass_lightning.apps.study.data import data_check_folder
from cass_lightning.apps.study.plan import (
    FAILED_FILE,
    Point,
    StudySettings,
    build_plan,
    refuse_unsafe,
    statuses_of,
    write_plan,
)
from cass_lightning.apps.study.points import (
    DATA_REPORT,
    HEARTBEAT_S,
    compose_point,
    data_check_passed,
    parent_record,
    run_data_check,
)
from cass_lightning.apps.study.report import (
    INVOCATION_STARTED,
    overhead,
    seconds_since_start,
    write_report,
)
from cass_lightning.apps.study.settings import (
    check_study_names,
    check_study_settings,
    refuse_merged_grid,
)
from cass_lightning.apps.study.status import refuse_orphans, ways_on
from cass_lightning.apps.study.weights import resolve_weights
from cass_lightning.io import atomic_write_json, read_json
from cass_lightning.modules.registry import pretraining_methods

#: The worker was stopped from outside (Ctrl-C, SIGTERM): the study stops too.
STOPPED = {130, 143, -signal.SIGINT, -signal.SIGTERM}
#: Restarts of a stage's worker after it died in the middle of a point (each marks that point
#: failed), before the stage is given up.
MAX_RESTARTS = 3


# ----------------------------------------------------------------------------- settings
def _forwarded(task_overrides: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The overrides typed on the ``cass-study`` command line whose key starts with a prefix."""
    out = []
    for override in task_overrides:
        key = (override_key(override) or "").lstrip("+~")
        if any(key == p.rstrip(".") or key.startswith(p) for p in prefixes):
            out.append(override)
    return out


def settings_from(cfg: DictConfig, task_overrides: list[str], study_dir: Path) -> StudySettings:
    """The study's settings as plain values; the data overrides every point (and the data
    check) shares: ``data=...`` and ``data.*`` from the command line, ``study.overrides.data``,
    and the shared decoded cache."""
    s = cfg.study
    plain: dict[str, Any] = OmegaConf.to_container(s, resolve=True)  # type: ignore[assignment]
    check_study_settings(plain)
    weights, sources = resolve_weights(plain.get("weights") or {}, plain["encoders"])
    data = [*_forwarded(task_overrides, ("data.", "data", "paths.data_dir")),
            *plain["overrides"].get("data", [])]  # fmt: skip
    data.append(f"data.cache_dir={quote(study_dir / 'cache')}" if plain.get("cache")
                else "data.check_images=none")  # fmt: skip
    scale = float(plain.get("epoch_scale", 1.0))
    grid = []
    if plain.get("robustness"):
        r = plain["robustness"]
        grid = [(int(b), max(1, round(int(e) * scale))) for b in r["batch_sizes"]
                for e in r["epochs"]]  # fmt: skip
        refuse_merged_grid(r["epochs"], scale)
    o = plain["overrides"]
    common = list(o.get("common", []))
    if plain.get("device", "cpu") != "cpu":  # every point on the device: its trainer config
        common = [c for c in common if override_key(c) != "trainer"]
        common.append(f"trainer={plain['device']}")
    return StudySettings(
        kind=str(plain["kind"]), encoders=dict(plain["encoders"]), weights=weights,
        methods=list(plain["methods"]), arms=list(plain["arms"]),
        fractions=[float(f) for f in plain["fractions"]], seeds=[int(x) for x in plain["seeds"]],
        modes=list(plain["modes"]),
        pretrain_epochs=max(1, round(int(plain["pretrain"]["epochs"]) * scale)),
        pretrain_batch_size=int(plain["pretrain"]["batch_size"]),
        pretrain_seed=int(plain["pretrain"].get("seed", 77)),
        common=common, data=data, pretrain=list(o.get("pretrain", [])),
        cass=list(o.get("cass", [])),
        dino=list(o.get("dino", [])), finetune=list(o.get("finetune", [])), grid=grid,
        method_overrides={m.name: list(o.get(m.name, [])) for m in pretraining_methods()
                          if m.name not in ("cass", "dino")},
        weights_sources=sources, logger=plain.get("logger"),
        wandb_project=str((plain.get("wandb") or {}).get("project") or "cass-study"),
    )  # fmt: skip


# ----------------------------------------------------------------------------- printing
def plan_table(points: list[Point], statuses: dict[str, str]) -> str:
    counts = Counter(statuses.values())
    lines = [f"{'status':11s} point"]
    lines += [f"{statuses[p.id]:11s} {p.id}" for p in points]
    lines.append(f"{len(points)} points: " +
                 ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running
def check_configs(points: list[Point], statuses: dict[str, str], study_dir: Path) -> None:
    """Compose one point of each kind not yet done (app, method, arm, mode: the points of a kind
    differ in values only), so an override no app accepts (a typo, a key missing a ``+``) stops
    the study here, naming the point, instead of failing every point in turn."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    kinds: dict[tuple[Any, ...], Point] = {}
    for point in points:
        if statuses[point.id] != "done":
            kind = (point.app, point.method, point.arm, point.info.get("mode"))
            kinds.setdefault(kind, point)
    for point in kinds.values():
        try:
            compose_point(point, point.folder(study_dir), [])
        except (HydraException, OmegaConfBaseException) as err:
            raise ValueError(
                f"study point {point.id} ({point.app}) does not compose: {err}. Its overrides: "
                f"{' '.join(point.overrides)}"
            ) from None


def run_stage(
    points: list[Point], study_dir: Path, launcher: list[str], data_check: Path | None = None
) -> int:
    """Run ``points`` in one worker (a Hydra multirun over their ids), which first checks the
    data in ``data_check`` when given; returns its exit code.

    See :func:`wait_forwarding` for what a signal to the study does."""
    ids = ",".join(p.id for p in points)
    token = (read_lock(study_dir / LOCK_FILE) or {}).get("token", "")
    command = [sys.executable, "-m", "cass_lightning.apps.study.points", "-m",
               f"study_dir={quote(study_dir)}", f"point={ids}",
               f"parent='{parent_record(os.getpid(), str(token))}'", *launcher]  # fmt: skip
    if data_check is not None:
        command.append(f"data_check={quote(data_check)}")
    return wait_forwarding(subprocess.Popen(command), study_dir / LOCK_FILE)


def wait_forwarding(worker: subprocess.Popen, heartbeat: Path | None = None) -> int:
    """Wait for ``worker``; its exit code, or 128 + the signal that stopped the study. While
    waiting, ``heartbeat`` (the study folder's lock) is touched every :data:`HEARTBEAT_S`: jobs
    on other hosts check that their study still runs by it.

    SIGINT or SIGTERM sent to the study is passed on to the worker as SIGTERM: it saves the
    running point's ``last.ckpt`` and stops; the study waits for that, then stops too, with the
    code of the signal it was sent (130 for Ctrl-C). SIGTERM, not SIGINT, so that a Ctrl-C
    which reached the worker directly (one process group) is not taken by it as a second
    Ctrl-C (stop at once, unsaved); and a SIGINT sent to the study's process alone (``kill
    -INT <pid>``) still stops the worker. A SIGINT is passed on after a second, only to a
    worker still running then: a worker the terminal's Ctrl-C reached outside a training loop
    has stopped by then, and gets no second signal while it says how it stopped."""
    import threading

    got: list[int] = []

    def terminate() -> None:
        if worker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM)

    def forward(signum: int, frame: Any) -> None:
        got.append(signum)
        if signum == signal.SIGTERM:
            terminate()
        else:
            timer = threading.Timer(1.0, terminate)
            timer.daemon = True
            timer.start()

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:  # the heartbeat: jobs on other hosts check that this study still runs
            if heartbeat is not None:
                with contextlib.suppress(OSError):
                    os.utime(heartbeat)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = worker.wait(timeout=HEARTBEAT_S)
                break
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 + got[0] if got and code in STOPPED else code


def _record_crash(points: list[Point], study_dir: Path, code: int) -> int:
    """Mark as failed the point(s) a dead worker left interrupted; how many there were."""
    statuses = statuses_of(points, study_dir)
    crashed = [p for p in points if statuses[p.id] in ("interrupted", "partial")]
    for point in crashed:
        atomic_write_json(point.folder(study_dir) / FAILED_FILE, {
            "point": point.id, "error": "WorkerDied",
            "message": f"the worker process ended with code {code} while running this point",
        })  # fmt: skip
    return len(crashed)


def run_points(
    points: list[Point], study_dir: Path, launcher: list[str], data_check: Path | None = None
) -> int:
    """Every stage in order; points already done are skipped. Returns 0, or the exit code to
    stop with (the worker was interrupted). Run here (no launcher chosen), one worker checks the
    data (``data_check``) and takes both stages in order, so the imports are paid once; a
    fine-tuning point whose pretraining did not finish is skipped by the worker. With a launcher
    (SLURM) the data is checked here and each stage is one multirun, its points parallel jobs.
    Each run still reports its own peak memory (reset when it starts)."""
    if data_check is not None and launcher:
        if not run_data_check(data_check):
            raise _bad_data(data_check)
        data_check = None
    for stages in [(0, 1)] if not launcher else [(0,), (1,)]:
        for _ in range(MAX_RESTARTS + 1):
            todo = _todo(points, study_dir, stages)
            if not todo:
                break
            code = run_stage(todo, study_dir, launcher, data_check)
            if code in STOPPED:
                return 130 if code in (130, -signal.SIGINT) else 143
            if data_check is not None and not data_check_passed(data_check):
                raise _bad_data(data_check)
            data_check = None
            if code == 0 or not _record_crash(todo, study_dir, code):
                break
    return 0


def _bad_data(folder: Path) -> ValueError:
    """The data check's refusal, with the problems its report names."""
    report = folder / DATA_REPORT
    found = read_json(report, "data report") if report.is_file() else {}
    problems = found.get("problems") if isinstance(found, dict) else None
    said = f": {' '.join(map(str, problems))}" if problems else ""
    return ValueError(f"the study's data did not pass the check (report in {folder}){said}")


def _todo(points: list[Point], study_dir: Path, stages: tuple[int, ...]) -> list[Point]:
    """The points of ``stages`` to run now: not done or running, not failed in this invocation,
    and not waiting for a pretraining that is not going to run in the same worker."""
    statuses = statuses_of(points, study_dir)
    todo = [p for p in points if p.stage in stages and statuses[p.id] not in ("done", "running")
            and not (statuses[p.id] == "failed" and _failed_now(p, study_dir))]  # fmt: skip
    ids = {p.id for p in todo}
    return [p for p in todo if statuses[p.id] != "blocked" or p.needs in ids]


def _failed_now(point: Point, study_dir: Path) -> bool:
    """Whether the point failed during this invocation (then it is not retried now)."""
    failed = point.folder(study_dir) / FAILED_FILE
    return failed.is_file() and failed.stat().st_mtime >= INVOCATION_STARTED


def study(cfg: DictConfig, task_overrides: list[str], launcher: list[str]) -> int:
    """Plan, run what is not done, report. Returns the exit code."""
    study_dir = Path(str(cfg.study.dir)).expanduser().resolve()
    settings = settings_from(cfg, task_overrides, study_dir)
    points = build_plan(settings, study_dir)
    statuses = statuses_of(points, study_dir)
    print(plan_table(points, statuses))
    refuse_unsafe(points, CONFIG_DIR)
    if cfg.study.plan_only:
        return 0
    check_configs(points, statuses, study_dir)  # before anything is written
    with _claimed(study_dir):
        refuse_orphans(points, study_dir)
        return _run(cfg, settings, points, statuses, study_dir, launcher)


@contextlib.contextmanager
def _claimed(study_dir: Path) -> Any:
    """Hold the study folder's lock (the run-folder lock: pid, start time, host) while the
    study runs: two ``cass-study`` on one folder would run the same points into one folder."""
    try:
        with claim_run_folder(study_dir):
            yield
    except RunFolderBusy:
        holder = read_lock(study_dir / LOCK_FILE)
        who = (
            f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
            if holder
            else "a process whose lock cannot be read"
        )
        raise RunFolderBusy(
            f"the study {study_dir} is in use by another cass-study ({who}); nothing was "
            "written. Wait for it to end; if no study is running there (e.g. it was killed on "
            f"another machine), delete {study_dir / LOCK_FILE}."
        ) from None


def _run(cfg: DictConfig, settings: StudySettings, points: list[Point],
         statuses: dict[str, str], study_dir: Path, launcher: list[str]) -> int:  # fmt: skip
    """Run what is not done, report, and say how long it took (the study folder is held)."""
    statuses = statuses_of(points, study_dir)  # again, now that no other study can run here
    write_plan(study_dir, settings, points, statuses)
    data_check = None
    if any(s != "done" for s in statuses.values()):
        data_check = data_check_folder(settings, study_dir)
    code = run_points(points, study_dir, launcher, data_check)
    statuses = statuses_of(points, study_dir)
    print(plan_table(points, statuses))
    if not code:
        write_report(settings, points, study_dir, statuses)
    timing = overhead(points, study_dir, seconds_since_start())
    write_plan(study_dir, settings, points, statuses, {"last_invocation": timing})
    print(
        f"study time {timing['wall_seconds']:.0f} s, of which {timing['overhead_seconds']:.0f} "
        f"s ({timing['overhead_fraction']:.0%}) outside the training and evaluation loops"
    )
    if code:
        print(f"cass-study: stopped; run the same command again to continue ({study_dir})")
        return code
    failed = [p.id for p in points if statuses[p.id] != "done"]
    if failed:
        print(f"cass-study: {len(failed)} point(s) not done: {', '.join(failed[:10])}",
              file=sys.stderr)  # fmt: skip
        print("\n".join(ways_on(points, statuses, study_dir)), file=sys.stderr)
        return 1
    return 0


def launcher_overrides(overrides: list[str], device: str = "cpu") -> list[str]:
    """The overrides that choose and set Hydra's launcher, passed on to the workers (the study
    itself runs once; its points are what a launcher sends out), and the device the points run
    on, which sizes their jobs (``study.device=gpu``: a GPU each)."""
    keys = ("hydra/launcher", "hydra.launcher")
    chosen = [o for o in overrides if (override_key(o) or "").startswith(keys)]
    if chosen and device != "cpu":
        chosen.append(f"trainer.accelerator={device}")
    return chosen


@entry_point  # a command line Hydra cannot compose exits 2
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="study")
def _main(cfg: DictConfig) -> None:
    """Exit codes: 0 every point done and reported, 1 a refused input (named) or points not
    done, 2 usage error, 130/143 stopped by SIGINT/SIGTERM (run the same command again)."""
    hydra_cfg = HydraConfig.get()
    task = list(hydra_cfg.overrides.task)
    launcher = launcher_overrides(
        [*hydra_cfg.overrides.hydra, *task], str(cfg.study.get("device", "cpu"))
    )
    with reported_errors():
        code = study(cfg, task, launcher)
    if code:
        sys.exit(code)


def main() -> None:
    refused = check_study_names(sys.argv[1:])  # Hydra makes the folder before the task runs
    if refused:
        print(f"Error: {refused}", file=sys.stderr)
        raise SystemExit(1)
    _main()


if __name__ == "__main__":
    main()
