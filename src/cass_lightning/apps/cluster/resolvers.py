"""Config resolvers for running on SLURM: the run folder's name, a sweep folder no other sweep
shares, and the job's size from the trainer settings (``conf/hydra/launcher/slurm.yaml``).

Registered once by :mod:`cass_lightning.apps.run.common` (every app imports it), so the configs can
use them anywhere; they read only the environment SLURM sets and plain config values.
"""

from __future__ import annotations

import secrets
from typing import Any

from omegaconf import OmegaConf

from cass_lightning.apps.cluster.job import current_job

#: Accelerators that put a run on GPUs (``auto`` on a GPU partition is a GPU run).
GPU_ACCELERATORS = ("gpu", "cuda", "auto")
#: Memory asked per GPU and per CPU task (GB), and cores per task, when not set by hand.
GB_PER_GPU = 32
GB_PER_CPU_TASK = 4
CPUS_PER_GPU_TASK = 8
#: The warning signal comes this long before the time limit at most (seconds).
MAX_SIGNAL_DELAY_S = 120


def run_name(stamp: str) -> str:
    """``stamp`` (the time), or ``slurm-<job>[-step<N>]`` inside a SLURM batch job or ``srun``
    step: every task of a DDP step agrees on it, and a requeued job finds its own folder."""
    job = current_job()
    return job.run_name() if job is not None and job.owns_run_name else str(stamp)


def unique_suffix() -> str:
    """Four hex characters, drawn once per config: two sweeps started in the same second get
    different folders."""
    return secrets.token_hex(2)


def _count(devices: Any) -> int:
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    if isinstance(devices, list | tuple) and devices:
        return len(devices)
    return 1  # "auto" / -1: one per node unless set by hand (hydra.launcher.gpus_per_node)


def on_gpu(accelerator: Any) -> bool:
    return str(accelerator).lower() in GPU_ACCELERATORS


def slurm_gpus(accelerator: Any, devices: Any) -> int | None:
    """GPUs per node: the trainer's devices for a GPU trainer; none otherwise (``None``: no
    GPU option at all, which a cluster without GPUs would refuse)."""
    return _count(devices) if on_gpu(accelerator) else None


def slurm_tasks(strategy: Any, devices: Any) -> int:
    """Tasks per node: one per device under DDP (SLURM starts the processes, Lightning joins
    them), else one."""
    name = str(strategy).lower()
    return _count(devices) if name.startswith("ddp") and name != "ddp_spawn" else 1


def slurm_cpus(accelerator: Any, tasks: Any) -> int:
    """Cores per task: 8 per GPU process (data loading), 2 for a one-process CPU run, 1 per
    process of CPU DDP."""
    if on_gpu(accelerator):
        return CPUS_PER_GPU_TASK
    return 2 if int(tasks) <= 1 else 1


def slurm_mem_gb(accelerator: Any, gpus: Any, tasks: Any) -> int:
    """Memory per node (GB): 32 per GPU, 4 per CPU task."""
    if on_gpu(accelerator):
        return GB_PER_GPU * max(1, int(gpus or 1))
    return GB_PER_CPU_TASK * max(1, int(tasks))


def signal_delay(timeout_min: Any) -> int:
    """Seconds before the time limit at which the warning signal comes: 120, or a quarter of
    the limit for short jobs (at least 10), so that it always comes after the start and before
    the end, leaving time to save."""
    seconds = int(float(timeout_min) * 60)
    return max(10, min(MAX_SIGNAL_DELAY_S, seconds // 4))


RESOLVERS = {
    "cass_run_name": (run_name, False),
    "cass_unique": (unique_suffix, True),
    "cass_slurm_gpus": (slurm_gpus, False),
    "cass_slurm_tasks": (slurm_tasks, False),
    "cass_slurm_cpus": (slurm_cpus, False),
    "cass_slurm_mem_gb": (slurm_mem_gb, False),
    "cass_signal_delay": (signal_delay, False),
}


def register() -> None:
    """Register the resolvers (idempotent)."""
    for name, (function, cached) in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=cached)
