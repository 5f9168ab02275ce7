"""Helpers to drive the one-node test cluster (``tests/slurm/cluster.sh``) from the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "cluster.sh"
CLUSTER_DIR = Path(os.environ.get("CASS_SLURM_DIR", "/tmp/cass-slurm"))
SLURM_CONF = CLUSTER_DIR / "etc" / "slurm.conf"
#: What the tests of this folder may assume of the cluster's partitions.
CPU_PARTITION = "debug"
GPU_PARTITION = "gpu"


#: The environment as the suite started: the scenarios run beside other tests, whose
#: monkeypatched variables (a fake SLURM job, say) must not reach the real jobs.
BASE_ENV = dict(os.environ)


def job_env(cluster: dict[str, str], root: Path, **extra: str) -> dict[str, str]:
    """An app's environment for a job: the cluster, offline, one thread, folders under root."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **BASE_ENV, **cluster, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
        "CASS_DATA_ROOT": str(root / "data"), "CASS_OUTPUT_ROOT": str(root / "runs"),
        "PATH": f"{bin_dir}{os.pathsep}{BASE_ENV.get('PATH', '')}", **extra,
    }  # fmt: skip


def scheduler(cluster: dict[str, str], *args: str, check: bool = True) -> str:
    """Run a SLURM command (``squeue``, ``sacct``, ``scontrol``...) against the test cluster."""
    done = subprocess.run(list(args), env={**BASE_ENV, **cluster}, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {done.stderr}")
    return done.stdout


def job_state(cluster: dict[str, str], job: str) -> tuple[str, str]:
    """(state, reason) of ``job`` from squeue; ("", "") once the queue no longer lists it."""
    out = scheduler(cluster, "squeue", "-h", "-j", job, "-o", "%T|%r", check=False).strip()
    state, _, reason = out.partition("|")
    return state, reason


def sacct_states(cluster: dict[str, str], job: str) -> list[str]:
    """Every state the accounting recorded for ``job`` (``-D``: each requeued start too)."""
    out = scheduler(cluster, "sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "State")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def until(condition: Callable[[], Any], timeout: float, what: str, every: float = 1.0) -> Any:
    """Poll ``condition`` until it is truthy (returned) or ``timeout`` seconds pass (fail)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def hurry_requeued(cluster: dict[str, str], job: str) -> None:
    """A requeued job waits about two minutes before it may start (SLURM's rule); let it start
    now, as an administrator would (``scontrol update StartTime=now``)."""
    state, reason = job_state(cluster, job)
    if state == "PENDING" and reason == "BeginTime":
        scheduler(cluster, "scontrol", "update", f"jobid={job}", "StartTime=now", check=False)


def wait_job(
    cluster: dict[str, str], job: str, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    """Wait until ``job`` has left the queue (and ``proc``, the submitting command, has ended),
    letting each requeued start begin at once."""

    def gone() -> bool:
        hurry_requeued(cluster, job)
        return job_state(cluster, job)[0] == "" and (proc is None or proc.poll() is not None)

    until(gone, timeout, f"SLURM job {job} to end", every=2.0)


def starts(run: Path) -> list[dict[str, Any]]:
    """The starts a run folder's ``run_info.json`` lists (``[]`` before the first)."""
    info = run / "run_info.json"
    if not info.is_file():
        return []
    try:
        return json.loads(info.read_text()).get("starts", [])
    except ValueError:  # being rewritten this instant
        return []


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
