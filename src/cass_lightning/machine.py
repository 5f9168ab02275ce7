"""Where a figure came from: the machine, precision and library versions a run measured on.

Every speed, memory or accuracy figure a run records (``summary.json``, ``results.json``,
``run_info.json``, the loggers' hyperparameters) carries :func:`machine_record`, so two figures
are compared only when they came from the same kind of device (:func:`same_device`).
"""

from __future__ import annotations

import functools
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from cass_lightning.runtime import CPU_BF16_FLAGS, read_cpu_flags

#: The packages whose versions decide a run's numbers.
PACKAGES = ("torch", "lightning", "timm", "torchvision")


@functools.cache  # one process, one set of libraries
def package_versions() -> dict[str, str | None]:
    """torch, Lightning, timm, torchvision, CUDA and cuDNN versions (``None``: not present)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    found["cudnn"] = str(cudnn) if cudnn is not None else None
    return found


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what the platform says)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.cache  # read once per process, not at every checkpoint
def cpu_record() -> dict[str, Any]:
    """The CPU: model, logical cores, and whether it does bf16 natively (``None``: unknown)."""
    flags = read_cpu_flags()
    native = None if flags is None else bool(flags & set(CPU_BF16_FLAGS))
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "cpu_bf16_native": native}


def gpu_record(index: int = 0) -> dict[str, Any]:
    """One CUDA device: name and memory in GiB."""
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}


def machine_record(
    precision: str,
    accelerator: str,
    devices: int,
    processes: int,
    device_indices: list[int] | None = None,
) -> dict[str, Any]:
    """What a run's figures were measured on.

    ``accelerator``: ``cpu``, ``cuda`` or ``mps``; ``devices``: devices used by this machine's
    processes; ``processes``: the run's world size; ``device_indices``: the CUDA devices used.
    ``device`` is one line a person reads beside a speed figure (:func:`device_label`).
    """
    record: dict[str, Any] = {
        "precision": str(precision),
        "accelerator": accelerator,
        "device_count": int(devices),
        "processes": int(processes),
        "host": platform.node(),
        **cpu_record(),
        "gpus": [],
        "versions": dict(package_versions()),
    }
    if accelerator == "cuda" and torch.cuda.is_available():
        record["gpus"] = [gpu_record(i) for i in (device_indices or range(int(devices)))]
    record["device"] = device_label(record)
    return record


def device_label(record: dict[str, Any] | None) -> str:
    """``NVIDIA H100 80GB HBM3 x1 (79.2 GiB)`` or ``CPU: AMD EPYC (2 cores, bf16 native)``;
    ``unknown device`` for a record from before devices were recorded."""
    if not record:
        return "unknown device"
    processes = int(record.get("processes") or 1)
    spread = f", {processes} processes" if processes > 1 else ""
    gpus = record.get("gpus") or []
    if gpus:
        names = sorted({str(g.get("name")) for g in gpus})
        memory = gpus[0].get("memory_gib")
        return f"{' + '.join(names)} x{len(gpus)} ({memory} GiB{spread})"
    if record.get("accelerator") == "mps":
        return f"Apple MPS ({record.get('cpu')}{spread})"
    bf16 = {True: ", bf16 native", False: ", bf16 emulated"}.get(record.get("cpu_bf16_native"), "")
    return f"CPU: {record.get('cpu')} ({record.get('cpu_cores')} cores{bf16}{spread})"


def same_device(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two runs' times may be divided: both recorded, on the same kind and number of
    devices (the host may differ: a cluster's nodes of one kind are alike)."""
    if not a or not b:
        return False
    return device_label(a) == device_label(b)


def trainer_machine(trainer: Any) -> dict[str, Any]:
    """:func:`machine_record` of a built Lightning trainer: the precision and devices it uses."""
    root = trainer.strategy.root_device
    accelerator = root.type if root.type in ("cuda", "mps") else "cpu"
    devices = int(getattr(trainer, "num_devices", 1) or 1)
    indices = None
    if accelerator == "cuda":
        ids = getattr(trainer, "device_ids", None) or [root.index or 0]
        indices = [int(i) for i in ids]
    return machine_record(
        str(trainer.precision), accelerator, devices, int(trainer.world_size), indices
    )


def local_device(device: torch.device | str = "cpu", precision: str = "32-true") -> str:
    """:func:`device_label` of this process's ``device`` (what a benchmark prints beside a
    figure it measured here)."""
    kind = torch.device(device).type
    accelerator = kind if kind in ("cuda", "mps") else "cpu"
    index = torch.device(device).index or 0 if kind == "cuda" else None
    record = machine_record(precision, accelerator, 1, 1, [index] if index is not None else None)
    return str(record["device"])


def time_ratio(a: float, a_device: str, b: float, b_device: str) -> tuple[float | None, str]:
    """``(a / b, "")`` for two times measured on the same device; ``(None, why)`` otherwise:
    a ratio across devices measures the devices, not what was compared."""
    if a_device != b_device:
        return None, f"not computed: measured on different devices ({a_device} vs {b_device})"
    if b <= 0:
        return None, "not computed: the second time is not positive"
    return a / b, ""
