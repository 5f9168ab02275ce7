"""One optimiser with named per-arm parameter groups, and the learning-rate schedules.

One optimiser (rather than the reference notebook's one Adam per network) keeps mixed precision,
gradient clipping and accumulation Lightning's job. Adam is per-parameter, so one Adam with two
groups of identical settings takes exactly the steps of two Adams.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

from cass_lightning.checks import check_choice
from cass_lightning.encoders import layer_ids

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cyclic_cosine", "warmup_cosine", "none")


def _no_weight_decay_names(module: nn.Module) -> set[str]:
    """Parameter names that timm marks as exempt from decay (ViT position embedding, cls token)."""
    names = getattr(module, "no_weight_decay", None)
    return set(names()) if callable(names) else set()


def layers_below_top(model: nn.Module) -> dict[str, int]:
    """Parameter name -> how many of timm's fine layer groups lie above it (0 = the classifier,
    or the last block when there is none; the most for the stem)."""
    ids = layer_ids(model, coarse=False)
    deepest = max(ids.values())
    return {name: deepest - depth for name, depth in ids.items()}


def arm_param_groups(
    arm: str,
    modules: Iterable[nn.Module],
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Groups ``<arm>`` (decayed weights) and ``<arm>_no_decay`` (norms, biases, embeddings).

    As in DINO's reference: parameters with one dimension (biases, norm scales) and timm's
    ``no_weight_decay()`` names get no weight decay. Frozen parameters are left out. Empty groups
    are dropped so the optimiser never holds a group without parameters.

    With ``layer_decay`` the first module (the timm backbone) is split further by depth: groups
    ``<arm>_d<k>`` / ``<arm>_d<k>_no_decay`` at ``lr * layer_decay ** k`` (``layer_lr_factor``
    records the multiplier); the full-lr groups keep the plain names.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}  # (layers below top, no decay)
    for index, module in enumerate(modules):
        exempt = _no_weight_decay_names(module)
        split = layer_decay is not None and layer_decay < 1.0 and index == 0
        below = layers_below_top(module) if split else {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim <= 1 or name in exempt
            buckets.setdefault((below.get(name, 0), no_decay), []).append(param)
    groups = []
    for (depth, no_decay), params in sorted(buckets.items()):
        scale = layer_decay**depth if layer_decay else 1.0
        name = arm if depth == 0 else f"{arm}_d{depth}"
        groups.append(
            dict(
                name=f"{name}_no_decay" if no_decay else name,
                params=params,
                lr=lr * scale,
                layer_lr_factor=scale,
                weight_decay=0.0 if no_decay else weight_decay,
            )
        )
    return groups


def fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused Adam can take ``groups``: every parameter on CUDA, floating point."""
    params = [p for group in groups for p in group["params"]]
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)


def build_optimizer(
    groups: list[dict[str, Any]],
    name: str = "adam",
    lr: float = 1e-3,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    fused: bool = False,
    **unused: Any,
) -> Optimizer:
    """Instantiate the optimiser over prepared groups (each group carries its own lr and decay).

    ``fused``: Adam/AdamW's fused CUDA kernel (one launch for all parameters instead of a few per
    tensor), used only when every parameter is a CUDA floating-point tensor; elsewhere (CPU,
    SGD) the default implementation, so a fused setting never changes where a run can go.
    """
    check_choice("optimizer.name", name, OPTIMIZERS)
    extra = {"fused": True} if fused and fusable(groups) else {}
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, **extra)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **extra)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr: linear warmup from 0, then one cosine down to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    name: str = "cyclic_cosine",
    t_max: int = 16,
    eta_min: float = 1e-6,
    warmup_steps: int | None = None,
    warmup_fraction: float = 0.05,
    min_lr_ratio: float = 0.01,
    **unused: Any,
) -> LRScheduler | None:
    """The schedules, all stepped once per optimiser step.

    - ``cyclic_cosine``: the paper's ``CosineAnnealingLR(T_max, eta_min)`` stepped every
      iteration, so the lr falls to ``eta_min`` after ``t_max`` steps and climbs back, a cycle of
      ``2 * t_max`` steps for the whole run (T_max=16: 32 steps).
    - ``warmup_cosine``: linear warmup (``warmup_steps``, or ``warmup_fraction`` of the run) then
      a single cosine to ``min_lr_ratio`` times the base lr at the end of the run.
    - ``none``: constant lr.
    """
    check_choice("scheduler.name", name, SCHEDULERS)
    if name == "none":
        return None
    if name == "cyclic_cosine":
        if t_max < 1:
            raise ValueError(f"scheduler.t_max must be >= 1 step, got {t_max}")
        return CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
    if total_steps < 1:
        raise ValueError("warmup_cosine needs the run length; the trainer reported 0 steps")
    warmup = warmup_steps if warmup_steps is not None else round(warmup_fraction * total_steps)
    return LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup, total_steps, min_lr_ratio)
    )


def lightning_optimizers(
    groups: list[dict[str, Any]],
    optimizer_cfg: dict[str, Any],
    scheduler_cfg: dict[str, Any],
    trainer: Any,
) -> Any:
    """What a ``configure_optimizers`` returns: the optimiser over ``groups`` and its schedule,
    stepped every optimiser step. The run length is asked of the trainer only when the schedule
    needs it (``warmup_cosine``)."""
    optimizer = build_optimizer(groups, **optimizer_cfg)
    total_steps = 0
    if scheduler_cfg["name"] == "warmup_cosine":
        total_steps = int(trainer.estimated_stepping_batches)
    scheduler = build_scheduler(optimizer, total_steps, **scheduler_cfg)
    if scheduler is None:
        return optimizer
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }


def group_learning_rates(optimizer: Optimizer) -> dict[str, float]:
    """``lr/<group>`` of each full-lr decayed group (its ``_no_decay`` twin shares the lr; the
    depth groups of layer-wise decay follow it by a fixed factor), for logging."""
    return {
        f"lr/{group['name']}": float(group["lr"])
        for group in optimizer.param_groups
        if not str(group.get("name", "")).endswith("_no_decay")
        and float(group.get("layer_lr_factor", 1.0)) == 1.0
    }
