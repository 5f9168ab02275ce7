"""Which SLURM job this process is, read from the variables SLURM sets, and the few scheduler
commands the apps need (requeue this job, ask whether a job still exists).

A requeued job keeps its job id (and array ids) and gets a higher ``SLURM_RESTART_COUNT``: that
is how a start tells "my own job, started again" from another run that happens to use the same
folder. Every record a run or a study point writes carries :meth:`SlurmJob.record`, so the
check works across hosts and pid spaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Job states in which a job may still run or run again (squeue's long names).
LIVE_STATES = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
     "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
     "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)  # fmt: skip


@dataclass(frozen=True)
class SlurmJob:
    """The SLURM job (and step) this process runs in."""

    job_id: str
    array_job_id: str | None = None
    array_task_id: str | None = None
    step_id: str | None = None
    restart_count: int = 0
    procid: int = 0
    ntasks: int = 1
    nnodes: int = 1
    batch: bool = False
    submitit: bool = False

    @property
    def key(self) -> str:
        """The job's name in the scheduler: ``<array job>_<task>`` for an array task, else the
        job id. The same across requeues."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    @property
    def owns_run_name(self) -> bool:
        """Whether the run folder should be named after the job: a batch script or an ``srun``
        step (requeued as a whole, and all of a step's tasks must agree on one folder); not
        an interactive ``salloc`` shell."""
        return self.batch or self.step_id is not None

    def run_name(self) -> str:
        """``slurm-<job>`` (``-step<N>`` inside an ``srun`` step): one name for every task of a
        step and every restart of the job."""
        step = f"-step{self.step_id}" if self.step_id not in (None, "batch") else ""
        return f"slurm-{self.key}{step}"

    def record(self) -> dict[str, Any]:
        """What a run start, a lock or a study point keeps of the job (plain JSON values)."""
        return {"job": self.key, "job_id": self.job_id, "restart": self.restart_count,
                "step": self.step_id}  # fmt: skip


def _int(value: str | None, default: int) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


def current_job(environ: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The job this process runs in, or ``None`` outside SLURM."""
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    step = env.get("SLURM_STEP_ID")
    return SlurmJob(
        job_id=job_id,
        array_job_id=env.get("SLURM_ARRAY_JOB_ID"),
        array_task_id=env.get("SLURM_ARRAY_TASK_ID"),
        step_id=step if step not in (None, "") else None,
        restart_count=_int(env.get("SLURM_RESTART_COUNT"), 0),
        procid=_int(env.get("SLURM_PROCID"), 0),
        ntasks=_int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS"), 1),
        nnodes=_int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES"), 1),
        batch=env.get("ENVIRONMENT") == "BATCH",
        submitit=env.get("SUBMITIT_EXECUTOR") == "slurm",
    )


def earlier_start_of(job: SlurmJob | None, record: Any) -> bool:
    """Whether ``record`` (a :meth:`SlurmJob.record` kept by a run start, a lock or a point)
    was written by an earlier start of ``job``: same job, lower restart count. SLURM never runs
    two starts of one job at once, so such a holder has ended, whatever host it was on."""
    if job is None or not isinstance(record, dict):
        return False
    restart = record.get("restart")
    return (
        record.get("job") == job.key
        and isinstance(restart, int)
        and not isinstance(restart, bool)
        and restart < job.restart_count
    )


def same_start_of(job: SlurmJob | None, record: Any) -> bool:
    """Whether ``record`` was written by this very start of ``job`` (same restart count)."""
    if job is None or not isinstance(record, dict):
        return False
    return record.get("job") == job.key and record.get("restart") == job.restart_count


class SchedulerError(RuntimeError):
    """A scheduler command failed; the message names it and what it said."""


def _scontrol() -> str:
    path = shutil.which("scontrol")
    if path is None:
        raise SchedulerError("scontrol is not on PATH: this process cannot reach SLURM")
    return path


def requeue(job: SlurmJob) -> None:
    """Put ``job`` back in the queue (``scontrol requeue``); it starts again with the same id
    and a higher restart count. SLURM signals the running start (SIGTERM) as it does so."""
    done = subprocess.run([_scontrol(), "requeue", job.key], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SchedulerError(f"scontrol requeue {job.key} failed: {done.stderr.strip()}")


def job_state(key: str, timeout: float = 20) -> str | None:
    """The scheduler's state of job ``key`` (e.g. ``RUNNING``), ``"GONE"`` when the scheduler
    no longer knows it, or ``None`` when the scheduler cannot be asked (not a SLURM host, no
    answer): then nothing can be concluded."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        done = subprocess.run([squeue, "-h", "-j", str(key), "-o", "%T"], capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    if done.returncode == 0 and lines:
        return lines[0].strip().upper()
    if "Invalid job id" in done.stderr or (done.returncode == 0 and not lines):
        return "GONE"
    return None


def job_alive(record: Any) -> bool | None:
    """Whether the job in a :meth:`SlurmJob.record` may still run: ``True``/``False`` from the
    scheduler, ``None`` when there is no job in the record or the scheduler cannot tell."""
    if not isinstance(record, dict) or not isinstance(record.get("job"), str):
        return None
    state = job_state(record["job"])
    if state is None:
        return None
    return state in LIVE_STATES
