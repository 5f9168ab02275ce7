"""The run's launch and speed settings, decided before anything is built: precision, the
learning-rate scale for the effective batch, the launch checks (multirun x DDP, SLURM tasks) and
the ``speed`` block (TF32, fused optimiser, channels_last, loader options). One rule for
cass-pretrain and cass-finetune (and so for every method); each is printed once and recorded
with the run."""

from __future__ import annotations

import sys
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from cass_lightning import runtime
from cass_lightning.apps.cluster.job import current_job
from cass_lightning.apps.run.runfolder import is_rank_zero
from cass_lightning.data.loaders import resolve_workers
from cass_lightning.runtime import (
    check_multirun_strategy,
    lr_scale_factor,
    resolve_precision,
    resolve_speed,
    speed_request,
)


def launch_settings(cfg: DictConfig) -> dict[str, Any]:
    """Precision, learning-rate scale and launch checks, decided (and printed) before building.

    ``trainer.precision=auto`` resolves to what the hardware supports; ``lr_scaling.rule``
    scales every configured learning rate for the effective global batch
    (``data.batch_size x trainer.accumulate_grad_batches``) against ``lr_scaling.base_batch_size``.
    """
    trainer = cfg.trainer
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    job = current_job()
    check_multirun_strategy(
        multirun, trainer.get("strategy", "auto"), trainer.get("devices"),
        int(trainer.get("num_nodes", 1) or 1),
        job.ntasks if job is not None and job.step_id is not None else None,  # srun's tasks
    )  # fmt: skip
    effective = int(cfg.data.batch_size) * int(trainer.get("accumulate_grad_batches", 1))
    scaling = cfg.get("lr_scaling") or {}
    rule = scaling.get("rule", "none")
    factor = lr_scale_factor(rule, effective, int(scaling.get("base_batch_size", effective)))
    precision = resolve_precision(trainer.get("precision"), trainer.get("accelerator"))
    on_gpu = trainer.get("accelerator") in ("gpu", "cuda") or (
        trainer.get("accelerator") in (None, "auto") and torch.cuda.is_available()
    )
    warn_slow_bf16(precision, on_cpu=not on_gpu and trainer.get("accelerator") != "mps")
    # SyncBatchNorm only exists for CUDA; CPU DDP (gloo, tests) keeps per-process statistics.
    sync_bn = bool(trainer.get("sync_batchnorm", False)) and on_gpu
    settings = {
        "precision": precision,
        "strategy": trainer.get("strategy", "auto"),  # the model's declaration may refine it
        "sync_batchnorm": sync_bn,
        "lr_scaling_rule": rule,
        "batch_lr_factor": factor,
        "effective_batch_size": effective,
    }
    if rank_zero_only.rank == 0:
        print(
            f"precision {precision} (asked: {trainer.get('precision')}); lr scaling {rule}: "
            f"x{factor:.4g} for an effective batch of {effective}"
        )
    return settings


def speed_settings(cfg: DictConfig, precision: str, on_cuda: bool) -> dict[str, bool]:
    """The ``speed`` block (and the loader options ``data.pin_memory`` /
    ``data.persistent_workers``) resolved for this machine: booleans in effect, printed once.
    Shared by cass-pretrain and cass-finetune, so CASS, DINO and fine-tuning get one rule."""
    workers = resolve_workers(cfg.data.get("num_workers", 0))
    asked = speed_request(cfg.get("speed"), cfg.get("data"))
    settings = resolve_speed(asked, on_cuda=on_cuda, num_workers=workers, precision=precision)
    if rank_zero_only.rank == 0:
        on = [k for k, v in settings.items() if v]
        print(f"speed settings on: {', '.join(on) if on else 'none'}")
    return settings


def check_speed(cfg: DictConfig) -> None:
    """Refuse a bad ``speed`` value or key by name before the run claims its folder."""
    resolve_speed(speed_request(cfg.get("speed"), cfg.get("data")), on_cuda=False, num_workers=0)


def uses_cuda(accelerator: Any) -> bool:
    """Whether a trainer with ``accelerator`` runs on CUDA here."""
    return accelerator in ("gpu", "cuda", None, "auto") and torch.cuda.is_available()


def warn_slow_bf16(precision: str, on_cpu: bool) -> None:
    """Say at start when bf16 on this CPU would be emulated (many times slower than fp32)."""
    if on_cpu and is_rank_zero():
        capability = torch.backends.cpu.get_cpu_capability()
        warning = runtime.cpu_bf16_warning(precision, on_cpu, capability, runtime.read_cpu_flags())
        if warning:
            print(f"Warning: {warning}", file=sys.stderr)
