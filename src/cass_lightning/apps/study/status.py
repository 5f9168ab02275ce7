"""What ``cass-study`` says about points it cannot simply run: a point still held by a live
worker or SLURM job (named, with the command that lets it go), and the ways on past a point
that failed (its error and the command that starts it afresh)."""

from __future__ import annotations

import shlex
from pathlib import Path

from cass_lightning.apps.run.runfolder import RunFolderBusy
from cass_lightning.apps.study.plan import FAILED_FILE, Point
from cass_lightning.io import read_json


def refuse_orphans(points: list[Point], study_dir: Path) -> None:
    """Refuse to run beside a worker of an earlier ``cass-study`` that is still running a point
    on this machine (its ``cass-study`` was killed, the worker was not): named by process."""
    from cass_lightning.apps.cluster.job import job_alive
    from cass_lightning.apps.run.runfolder import holder_alive
    from cass_lightning.apps.study.plan import STARTED_FILE

    for point in points:
        started = point.folder(study_dir) / STARTED_FILE
        if not started.is_file():
            continue
        record = read_json(started, "point start record")
        if not isinstance(record, dict):
            continue
        job = record.get("slurm") if isinstance(record.get("slurm"), dict) else None
        alive = holder_alive(record)
        if job is not None and alive is not False and job_alive(job) is not False:
            raise RunFolderBusy(
                f"point {point.id} of {study_dir} is held by SLURM job {job.get('job')} "
                f"(on {record.get('host')}, started {record.get('started')}), which is still in "
                f"the queue; nothing was written. Wait for it to end (squeue -j "
                f"{job.get('job')}) or cancel it (scancel {job.get('job')}: the run saves its "
                "last.ckpt), then run the same command again."
            )
        if alive is True:
            raise RunFolderBusy(
                f"point {point.id} of {study_dir} is still being run by process "
                f"{record.get('pid')} on {record.get('host')} (a worker of an earlier "
                f"cass-study, started {record.get('started')}); nothing was written. Wait for it "
                f"to stop or stop it (kill {record.get('pid')}), then run the same command again."
            )


def ways_on(points: list[Point], statuses: dict[str, str], study_dir: Path) -> list[str]:
    """For each failed point: why (its ``failed.json``) and the commands that get past it, so a
    point that fails on every rerun is never a dead end."""
    lines = []
    for point in points:
        if statuses[point.id] != "failed":
            continue
        folder = point.folder(study_dir)
        try:
            record = read_json(folder / FAILED_FILE, "failure record")
        except (OSError, ValueError):
            record = None
        record = record if isinstance(record, dict) else {}
        why = str(record.get("message") or "no reason recorded").strip().splitlines()
        lines.append(f"  {point.id} failed: {record.get('error', 'error')}: "
                     f"{(why or [''])[0][:300]}")  # fmt: skip
        lines.append(
            "    a rerun retries it; if it fails the same way, fix the cause above, or start "
            f"the point afresh (its folder is kept): mv {shlex.quote(str(folder))} "
            f"{shlex.quote(str(folder)) + '.set-aside'} and run the same "
            "cass-study command again"
        )
    return lines
