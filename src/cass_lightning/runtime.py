"""Decisions about the machine a run lands on: precision, learning-rate scaling, launch mode.

Kept apart from the apps so plain-Python users get the same rules, and so each rule is tested
on its own.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cass_lightning.checks import check_choice, check_int

LR_SCALING_RULES = ("none", "linear", "sqrt")
#: Strategies whose launcher re-executes the script for every extra process. Under a Hydra
#: multirun that re-execution would start the whole sweep again in each child.
SCRIPT_RELAUNCH_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_notebook")


def resolve_precision(precision: str | int | None, accelerator: str | None = None) -> str:
    """``auto`` -> ``bf16-mixed`` on GPUs that support it, ``16-mixed`` on other GPUs, else
    ``32-true``. Any other value is returned unchanged (as a string)."""
    if precision is None or str(precision) != "auto":
        return str(precision) if precision is not None else "32-true"
    wants_gpu = accelerator in (None, "auto", "gpu", "cuda")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def check_batch_size(batch_size: Any, processes: int | None = None) -> int:
    """``data.batch_size`` as the global batch: an integer >= 1 that divides over ``processes``
    (devices x nodes, when known). The one rule; each app calls it before claiming its folder,
    and the datamodule when built by hand or attached to a trainer."""
    batch = check_int("data.batch_size", batch_size, 1)
    if processes and batch % processes:
        raise ValueError(
            f"data.batch_size={batch} is the global batch and must divide over the {processes} "
            "processes (trainer.devices x trainer.num_nodes): choose a multiple of the device count"
        )
    return batch


def lr_scale_factor(rule: str, batch_size: int, base_batch_size: int) -> float:
    """How much to multiply the configured learning rates by for a different batch size.

    ``linear``: batch / base (Goyal et al.); ``sqrt``: sqrt(batch / base), often better for Adam;
    ``none``: 1. ``batch_size`` is the effective global batch (per step, all devices).
    """
    check_choice("lr_scaling.rule", rule, LR_SCALING_RULES)
    if batch_size < 1 or base_batch_size < 1:
        raise ValueError(
            f"lr scaling needs positive batch sizes, got {batch_size} and base {base_batch_size}"
        )
    ratio = batch_size / base_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def world_size(devices: Any, num_nodes: int = 1) -> int | None:
    """Processes the trainer will run, when it can be told from the config (else ``None``)."""
    if isinstance(devices, int) and devices > 0:
        return devices * max(1, int(num_nodes))
    if isinstance(devices, list | tuple):
        return len(devices) * max(1, int(num_nodes))
    if isinstance(devices, str) and devices.isdigit():
        return int(devices) * max(1, int(num_nodes))
    return None


def check_multirun_strategy(
    multirun: bool, strategy: Any, devices: Any, num_nodes: int = 1,
    scheduler_tasks: int | None = None,
) -> None:  # fmt: skip
    """Refuse the Hydra-multirun + script-relaunching DDP combination before anything starts.

    Lightning's ``ddp`` launcher starts the other ranks by running the same command again; under
    ``-m`` every child would run the whole sweep again, duplicating jobs and folders. Inside a
    cluster job whose scheduler started one task per process (``scheduler_tasks`` = devices x
    nodes: SLURM's ``srun``, as the SLURM launcher does), Lightning relaunches nothing: allowed.
    """
    name = strategy if isinstance(strategy, str) else type(strategy).__name__.lower()
    size = world_size(devices, num_nodes)
    several = (size or 1) > 1 or devices in ("auto", -1, "-1")
    if scheduler_tasks is not None and size is not None and scheduler_tasks == size:
        return
    if multirun and several and name in SCRIPT_RELAUNCH_STRATEGIES:
        inside = (
            f" This process is one of {scheduler_tasks} SLURM task(s), but the trainer asks for "
            f"{size or devices} process(es): give the job one task per device "
            "(hydra.launcher.tasks_per_node)."
            if scheduler_tasks is not None
            else ""
        )
        raise ValueError(
            f"a Hydra multirun (-m) cannot use trainer.strategy={name} with several devices: "
            "its launcher re-runs the command for each process, which would start the sweep "
            "again in every child. Use trainer.strategy=ddp_spawn for sweeps on one machine, "
            "hydra/launcher=slurm to run each point as its own cluster job, or run the points "
            f"one by one without -m.{inside}"
        )


#: DDP strategies that have a ``<name>_find_unused_parameters_true`` twin in Lightning.
DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def strategy_for_idle_parameters(strategy: Any, idle: bool) -> Any:
    """The DDP strategy to use when some parameters get no gradient on some steps.

    ``predictor=alternate`` trains one arm's alignment per step, so the other arm's predictor
    (and, without a variance term, its whole backbone) is idle; plain DDP then fails with "Expected
    to have finished reduction". Named DDP strategies switch to their ``find_unused_parameters``
    twin; anything else is returned unchanged.
    """
    if idle and isinstance(strategy, str) and strategy in DDP_STRATEGIES:
        return f"{strategy}_find_unused_parameters_true"
    return strategy


#: The speed settings a run resolves and records (summary.json, run_info.json). ``auto`` picks
#: the value the rules below give for the machine; ``true``/``false`` are taken as asked, except
#: that CUDA-only switches are off (and recorded off) on a run without CUDA.
SPEED_KEYS = (
    "tf32",
    "fused_optimizer",
    "channels_last",
    "cudnn_benchmark",
    "compile_cnn",
    "compile_vit",
    "pin_memory",
    "persistent_workers",
)
#: Switches that only exist on CUDA: asked for on another device they are not in effect.
CUDA_ONLY = ("tf32", "fused_optimizer", "cudnn_benchmark", "pin_memory")


def _choice(key: str, value: Any) -> bool | None:
    """``True``/``False`` as asked, ``None`` for ``auto`` (or null); anything else is refused."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise ValueError(f"speed.{key} must be true, false or auto; got {value!r}")


def compile_arms(value: Any) -> dict[str, Any]:
    """``speed.compile`` as ``{"cnn": .., "vit": ..}``: a per-arm mapping, a list of arms, or one
    value for both (``true``/``false``/``auto``; a bare bool is the older one-switch form)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        unknown = sorted(set(value) - {"cnn", "vit"})
        if unknown:
            raise ValueError(f"speed.compile has unknown arm(s) {unknown}; use cnn and/or vit")
        return {"cnn": value.get("cnn", "auto"), "vit": value.get("vit", "auto")}
    if isinstance(value, list | tuple) or (
        hasattr(value, "__iter__") and not isinstance(value, str | bytes)
    ):
        arms = [str(arm) for arm in value]
        unknown = sorted(set(arms) - {"cnn", "vit"})
        if unknown:
            raise ValueError(f"speed.compile lists unknown arm(s) {unknown}; use cnn and/or vit")
        return {"cnn": "cnn" in arms, "vit": "vit" in arms}
    return {"cnn": value, "vit": value}


def resolve_speed(
    asked: dict[str, Any], on_cuda: bool, num_workers: int, precision: str = "32-true"
) -> dict[str, bool]:
    """The speed settings in effect, as booleans, from what was asked (``auto`` or a bool).

    ``auto`` rules (each one tested with given inputs):

    - ``tf32``, ``fused_optimizer``, ``cudnn_benchmark``, ``pin_memory``, ``channels_last``: on
      with CUDA, off elsewhere (on CPU none of them was measured faster, and the first four do
      nothing there). TF32 rounds fp32 matmul inputs to a 10-bit mantissa; bf16/fp16 autocast
      runs its matmuls in lower precision anyway.
    - ``compile_cnn`` / ``compile_vit``: off; the default awaits GPU measurements with the
      compile time included (``bench/gpu_check.sh``).
    - ``persistent_workers``: on when the loaders have workers (it keeps them between epochs).

    A CUDA-only switch asked ``true`` on a run without CUDA is off: it is not in effect there.
    ``precision`` is only checked here (``64-true`` turns TF32 off: fp64 has no TF32 path).
    """
    unknown = sorted(set(asked) - set(SPEED_KEYS))
    if unknown:
        raise ValueError(f"unknown speed setting(s) {unknown}; known: {', '.join(SPEED_KEYS)}")
    chosen = {key: _choice(key, asked.get(key, "auto")) for key in SPEED_KEYS}
    auto = {
        "tf32": on_cuda and not str(precision).startswith("64"),
        "fused_optimizer": on_cuda,
        "channels_last": on_cuda,
        "cudnn_benchmark": on_cuda,
        "compile_cnn": False,
        "compile_vit": False,
        "pin_memory": on_cuda,
        "persistent_workers": num_workers > 0,
    }
    resolved = {key: auto[key] if chosen[key] is None else bool(chosen[key]) for key in SPEED_KEYS}
    for key in CUDA_ONLY:
        resolved[key] = resolved[key] and on_cuda
    resolved["persistent_workers"] = resolved["persistent_workers"] and num_workers > 0
    return resolved


def speed_request(speed: Any, data: Any = None) -> dict[str, Any]:
    """The flat ``{key: auto|bool}`` of :data:`SPEED_KEYS` from the app's ``speed`` block (with
    ``compile`` per arm) and the loader options ``data.pin_memory`` / ``data.persistent_workers``
    (``null``: auto)."""
    speed = dict(speed or {})
    arms = compile_arms(speed.pop("compile", "auto"))
    asked = {**speed, "compile_cnn": arms["cnn"], "compile_vit": arms["vit"]}
    data = data or {}
    for key in ("pin_memory", "persistent_workers"):
        if key not in asked and data.get(key) is not None:
            asked[key] = data.get(key)
    return asked


def apply_speed_globals(settings: dict[str, bool], on_cuda: bool) -> None:
    """Process-wide switches: TF32 for fp32 matmuls and convolutions, cuDNN's autotuner.

    Set both ways on CUDA, so a run with ``tf32`` off gets exact fp32 even after one that had it
    on in the same process (the study's worker), and even though cuDNN allows TF32 by default.
    """
    if not on_cuda:
        return
    torch.set_float32_matmul_precision("high" if settings["tf32"] else "highest")
    torch.backends.cuda.matmul.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.allow_tf32 = settings["tf32"]
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]


def apply_speed_settings(settings: dict[str, bool], model: nn.Module, on_cuda: bool) -> None:
    """Put resolved ``settings`` (:func:`resolve_speed`) in effect for ``model``: process-wide
    switches, the CNN arm's layout, compilation per arm, and the optimiser the module builds."""
    apply_speed_globals(settings, on_cuda)
    arms = {"cnn": settings["compile_cnn"], "vit": settings["compile_vit"]}
    apply_speed_switches(model, settings["channels_last"], arms)
    set_fused_optimizer(model, settings["fused_optimizer"])


def set_fused_optimizer(module: Any, fused: bool) -> None:
    """Ask ``module`` (a pretraining or classifier module) for a fused optimiser when it builds
    one: every module of this package keeps its optimiser settings in ``optimizer_cfg``, which
    reaches ``modules.optim.build_optimizer``. Not a hyperparameter, so checkpoints and resumes
    do not depend on it."""
    cfg = getattr(module, "optimizer_cfg", None)
    if isinstance(cfg, dict):
        cfg["fused"] = bool(fused)


def _is_vit(module: nn.Module) -> bool:
    """A timm vision transformer (patch embedding), as opposed to a CNN."""
    return hasattr(module, "patch_embed")


def apply_speed_switches(
    model: nn.Module, channels_last: bool, compile: bool | dict[str, bool] | list[str]
) -> list[str]:
    """NHWC memory layout for the CNN arms' 4-D weights (convolutions run faster on recent GPUs;
    the ViT is left as it is) and ``torch.compile`` of the timm models inside ``model``, in
    place; returns what was done, e.g. ``["channels_last:cnn", "compile:vit"]``.

    ``compile``: ``True`` for every arm, or per arm (``{"cnn": True, "vit": False}`` or a list
    of arms). In place: ``nn.Module.compile`` keeps the state-dict keys, so checkpoints and
    exports stay plain timm. Compilation costs its time on the first steps (docs/runs.md).
    """
    arms = compile_arms(compile)
    done: list[str] = []
    models = [m for m in model.modules() if callable(getattr(m, "forward_features", None))]
    for module in models:
        arm = "vit" if _is_vit(module) else "cnn"
        if channels_last and arm == "cnn":
            module.to(memory_format=torch.channels_last)
            done.append("channels_last:cnn")
        if arms[arm] is True:
            module.compile()
            done.append(f"compile:{arm}")
    return done


#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX512-BF16 and AMX on x86, the
#: BF16 extension on Arm. Without one, bf16 matmuls are emulated, far slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def read_cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``),
    read from the file when ``cpuinfo`` is None; ``None`` where there is no such file."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as handle:
                cpuinfo = handle.read()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return None


def cpu_bf16_warning(
    precision: str, on_cpu: bool, capability: str, flags: set[str] | None
) -> str | None:
    """Why a bf16 run on this CPU will be slow, or ``None`` when it will not (or cannot tell).

    A pure rule of what torch reports (``torch.backends.cpu.get_cpu_capability()``) and the CPU
    flags, so it is tested with given flag sets; the apps print it at start.
    """
    if not on_cpu or not str(precision).startswith("bf16"):
        return None
    if flags is None:
        return None  # no /proc/cpuinfo: nothing to go on
    native = sorted(set(CPU_BF16_FLAGS) & flags)
    if native:
        return None
    return (
        f"trainer.precision={precision} on a CPU without native bf16 (torch reports "
        f"{capability}; no {', '.join(CPU_BF16_FLAGS[:2])} in /proc/cpuinfo): bf16 is emulated "
        "there and runs many times slower than fp32. Use trainer.precision=32-true (or auto, "
        "which picks it on CPUs)"
    )


def check_run_length(max_epochs: Any, max_steps: Any) -> None:
    """Refuse a run that would train nothing (Lightning would report it finished at once).

    ``max_epochs``: >= 1, or -1 for no epoch limit (``None``: Lightning's default).
    ``max_steps``: >= 1, or -1 for no step limit (``None`` is the same).
    """
    steps = -1 if max_steps is None else max_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or (steps < 1 and steps != -1):
        raise ValueError(
            f"trainer.max_steps must be an integer >= 1, or -1 for no step limit; got {max_steps!r}"
        )
    if max_epochs is None:
        return
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int):
        raise ValueError(f"trainer.max_epochs must be an integer; got {max_epochs!r}")
    if max_epochs < 1 and max_epochs != -1:
        raise ValueError(
            f"trainer.max_epochs must be >= 1 (or -1 for no limit); got {max_epochs!r}: "
            "a run of 0 epochs trains nothing, saves no checkpoint and exports nothing"
        )
