"""Momentum (EMA) targets: the one mechanism behind BYOL's target, DINO's teacher and CASS's
``ema`` remedy.

A target receives no gradient and is not in the optimiser. After every optimiser step
(:meth:`~.base.PretrainingModule.optimizer_step`) each target moves towards its online module
by lightly's ``update_momentum`` (``target = m * target + (1 - m) * online``), with ``m``
rising along the base's cosine over the run (:meth:`~.base.PretrainingModule.along_run`).
"""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import update_momentum
from torch import Tensor, nn

from cass_lightning.evaluation import KeepPooled


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to serve as its momentum target. The copy keeps no pooled
    features: only the online network feeds the online probe."""
    target = copy.deepcopy(module)
    for sub in target.modules():
        for key, hook in list(sub._forward_hooks.items()):
            if isinstance(hook, KeepPooled):
                del sub._forward_hooks[key]
    return target.requires_grad_(False)


@torch.no_grad()
def follow(online: nn.Module, target: nn.Module, momentum: float, buffers: bool = False) -> None:
    """Move ``target``'s parameters towards ``online``'s; with ``buffers`` also copy the
    buffers (BatchNorm statistics) over."""
    if next(online.parameters(), None) is not None:  # lightly needs a parameter
        update_momentum(online, target, m=momentum)
    if buffers:
        for t, o in zip(target.buffers(), online.buffers(), strict=True):
            t.copy_(o)


class EMATargets(nn.ModuleDict):
    """CASS's remedy: one momentum copy ``Sequential(backbone, head)`` per arm, each the other
    arm's target; keys and state-dict names are the arms' (``cnn``, ``vit``)."""

    def __init__(self, arms: dict[str, tuple[nn.Module, nn.Module]]) -> None:
        super().__init__({
            arm: nn.Sequential(momentum_copy(backbone), momentum_copy(head))
            for arm, (backbone, head) in arms.items()
        })  # fmt: skip

    def pairs(self, arms: dict[str, tuple[nn.Module, nn.Module]]) -> list[tuple[nn.Module, ...]]:
        """``(online, target)`` for each arm's backbone and head."""
        return [pair for arm, online in arms.items() for pair in zip(online, self[arm])]

    @torch.no_grad()
    def outputs(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Each copy's outputs on every view: ``(cnn outputs, vit outputs)``."""
        return [self["cnn"](v) for v in views], [self["vit"](v) for v in views]
