"""The run folder's claim: a lock file held from a run's start to its end, and the record of
the process holding it (pid, host, start time), which the study also writes for its points.

Of two runs started into one folder exactly one gets the lock; a lock left by a process that
has ended on this machine is taken over with a note.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cass_lightning.apps.cluster.job import current_job, earlier_start_of, job_alive
from cass_lightning.io import utc_timestamp


def is_rank_zero() -> bool:
    """Whether this process is rank 0 (always, outside distributed training)."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


#: The lock file a run holds in its folder from its start to its end (hidden: never a result).
LOCK_FILE = ".run.lock"


class RunFolderBusy(RuntimeError):
    """Another live run holds the folder's lock; the message names it and what to do."""


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has ended


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """Whether the lock's process still runs: ``None`` when it cannot be told (another host)."""
    job = current_job()
    if earlier_start_of(job, holder.get("slurm")):
        return False  # an earlier start of this very job: SLURM runs one start at a time
    if holder.get("host") != socket.gethostname():
        # another host: only the scheduler can tell (False once it no longer knows the job)
        return False if job_alive(holder.get("slurm")) is False else None
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    ticks = start_ticks(pid)
    if Path("/proc").is_dir() and ticks is None and Path(f"/proc/{pid}").exists():
        return False  # a zombie: it has ended, only its exit status is left
    recorded = holder.get("start_ticks")
    return not (recorded is not None and ticks is not None and ticks != recorded)


def read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def this_process() -> dict[str, Any]:
    """Who holds something (a lock, a study point): what :func:`holder_alive` reads back."""
    job = current_job()
    return {
        "pid": os.getpid(), "host": socket.gethostname(), "start_ticks": start_ticks(os.getpid()),
        "started": utc_timestamp(), **({"slurm": job.record()} if job is not None else {}),
    }  # fmt: skip


def _write_lock(lock: Path, token: str) -> None:
    holder = {**this_process(), "command": " ".join(sys.argv), "token": token}
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: one run wins
    try:
        os.write(fd, (json.dumps(holder) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _busy(folder: Path, lock: Path, holder: dict[str, Any] | None) -> RunFolderBusy:
    if holder is None:
        who = "a run whose lock file cannot be read"
    else:
        who = (f"process {holder.get('pid')} on {holder.get('host')}, started "
               f"{holder.get('started')} ({holder.get('command')})")  # fmt: skip
    return RunFolderBusy(
        f"{folder} is in use by another run: {who}. Two runs writing one folder would mix their "
        "checkpoints, exports and metrics; nothing was written. Wait for that run to end or "
        f"choose another folder (hydra.run.dir=...). If no run is using it (e.g. it was killed "
        f"on another machine), delete {lock}."
    )


def _take_lock(folder: Path, lock: Path, token: str) -> None:
    for _ in range(5):
        try:
            _write_lock(lock, token)
            return
        except FileExistsError:
            holder = read_lock(lock)
        if holder is None or holder_alive(holder) is not False:
            raise _busy(folder, lock, holder)
        print(
            f"Note: {folder} was locked by process {holder.get('pid')} (started "
            f"{holder.get('started')}), which has ended without releasing it; taking it over.",
            file=sys.stderr,
        )
        stale = lock.with_name(f"{LOCK_FILE}.stale-{token}")
        try:
            os.rename(lock, stale)  # atomic: of two runs taking over, one renames it
        except FileNotFoundError:
            continue
        stale.unlink(missing_ok=True)
    raise _busy(folder, lock, read_lock(lock))


@contextlib.contextmanager
def claim_run_folder(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file while inside (rank 0 only; other ranks run under it).

    The lock is created with ``O_CREAT | O_EXCL``, so of two runs started into one folder
    exactly one gets it; the other is refused at once (:class:`RunFolderBusy`). It holds pid,
    host and start time: a lock left by a process that has ended on this machine (``kill -9``)
    is taken over with a note. It is removed when the block ends, by success or failure.
    """
    if not is_rank_zero():
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock, token = folder / LOCK_FILE, secrets.token_hex(8)
    _take_lock(folder, lock, token)
    try:
        yield
    finally:
        holder = read_lock(lock)
        if holder is not None and holder.get("token") == token:
            lock.unlink(missing_ok=True)
