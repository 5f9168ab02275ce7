"""Requeue = resume of the same job: the two halves of a SLURM requeue for the training apps.

* :func:`requeue_after_stop`: a run stopped by the scheduler's warning signal (SIGUSR2 from the
  launcher, SIGUSR1 in a plain ``sbatch`` script) has saved ``last.ckpt``; the job is put back in
  the queue. In a launcher job submitit's own handler does it (it keeps count of time-limit
  requeues, ``hydra.launcher.max_num_timeout``); in a plain script, ``scontrol requeue``.
  Lightning's own SLURM requeue (``hpc_ckpt_*.ckpt``) is off (:func:`lightning_plugins`).
* :func:`earlier_start_in` (used when a run starts): the folder was written by an earlier start of
  this very job, so the start continues it from ``last.ckpt`` instead of refusing it.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from cass_lightning.apps.cluster.job import (
    SchedulerError,
    current_job,
    earlier_start_of,
    requeue,
)


def earlier_start_in(info: dict[str, Any]) -> bool:
    """Whether a run's ``run_info.json`` (``info``) lists a start of this process's SLURM job
    with a lower restart count: the scheduler started the job again."""
    job = current_job()
    starts = info.get("starts") if isinstance(info, dict) else None
    if job is None or not isinstance(starts, list):
        return False
    return any(isinstance(s, dict) and earlier_start_of(job, s.get("slurm")) for s in starts)


def requeue_after_stop(stop: Any, message: str) -> str:
    """After a stop by a requeue signal (``stop.requeue_asked``), put this job back in the queue
    and return ``message`` saying so; otherwise ``message`` unchanged. Only rank 0 requeues. In
    a submitit job this hands over to submitit's handler, which exits the process."""
    job = current_job()
    if job is None or not stop.requeue_asked or job.procid != 0:
        return message
    # SLURM sends SIGTERM to the job as it requeues it: this start is ending anyway.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = stop.previous_handler(stop.received)
    if job.submitit and callable(handler):
        note = (f"Requeueing SLURM job {job.key} through submitit; it continues this run folder "
                "from last.ckpt when it starts again.")  # fmt: skip
        print(f"{message}\n{note}", file=sys.stderr, flush=True)
        try:
            handler(stop.received, None)  # submitit: pickles the job, requeues it, exits
        except Exception as err:  # e.g. timed out more often than max_num_timeout allows
            return f"{message}\nSLURM job {job.key} was not requeued: {err}"
        return message
    try:
        requeue(job)
    except SchedulerError as err:
        return f"{message}\nSLURM job {job.key} could not be requeued: {err}"
    return (
        f"{message}\nSLURM job {job.key} was requeued: when it starts again it continues this "
        "run folder from last.ckpt."
    )


def lightning_plugins() -> list[Any]:
    """Lightning's SLURM environment with its own requeue turned off, when Lightning would use
    SLURM's environment: the run saves and requeues itself (one owner of the requeue)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if current_job() is None or not SLURMEnvironment.detect():
        return []
    return [SLURMEnvironment(auto_requeue=False)]


def requeued_after_finish(folder: Path) -> bool:
    """Whether this start is a requeue of a job whose pretraining in ``folder`` had already
    finished (export and summary written): e.g. a script that runs several commands started
    again; the finished command has nothing left to do."""
    from cass_lightning.apps.run.runinfo import read_run_info

    finished = (folder / "export" / "meta.json").is_file() and (folder / "summary.json").is_file()
    return finished and earlier_start_in(read_run_info(folder))


#: A fine-tuning run's record of the SLURM job that started it (fine-tuning has no resume).
JOB_FILE = "job.json"


def record_job(folder: Path) -> None:
    """Note in ``folder`` which SLURM job start is writing it (nothing outside SLURM)."""
    from cass_lightning.io import atomic_write_json

    job = current_job()
    if job is not None and job.procid == 0:
        atomic_write_json(folder / JOB_FILE, job.record())


def _written_by_earlier_start(folder: Path) -> bool:
    """Whether ``folder``'s ``job.json`` names an earlier start of this process's SLURM job."""
    import json

    try:
        record = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return earlier_start_of(current_job(), record)


def finished_before_requeue(folder: Path, results: str) -> bool:
    """Whether an earlier start of this SLURM job finished the fine-tuning in ``folder`` (its
    ``results`` file written): the job was requeued after its work was done (e.g. a warning
    signal during the test, or a script of several commands started again)."""
    return (folder / results).is_file() and _written_by_earlier_start(folder)


def set_aside_requeued_attempt(folder: Path, names: tuple[str, ...]) -> Path | None:
    """When an earlier start of this SLURM job wrote ``folder`` (a requeued fine-tuning job),
    move what it wrote (``names``) into ``attempts/requeued-<n>/`` so the job starts again in
    its own folder; nothing is deleted. Returns where they went, or ``None``."""
    import os

    from cass_lightning.io import first_free

    if not _written_by_earlier_start(folder):
        return None
    target = first_free(lambda n: folder / "attempts" / f"requeued-{n}")
    target.mkdir(parents=True)
    for name in (*names, JOB_FILE):
        if (folder / name).exists():
            os.rename(folder / name, target / name)
    print(f"Requeued SLURM job: the earlier attempt in {folder} is kept in {target}; "
          "fine-tuning starts again", file=sys.stderr)  # fmt: skip
    return target
