"""Momentum (EMA) copies of CASS's arms, used as each other's targets (an opt-in remedy).

Each copy is ``Sequential(backbone, head)`` of one arm; it receives no gradient and is not in
the optimiser. After every optimiser step each copy moves towards its arm by lightly's
``update_momentum`` (``target = m * target + (1 - m) * online``) with ``m`` rising along
lightly's ``cosine_schedule`` over the run, as BYOL's and DINO's teachers do.
"""

from __future__ import annotations

import copy
import math

import torch
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn


class EMATargets(nn.ModuleDict):
    """One momentum copy per arm; keys and state-dict names are the arms' (``cnn``, ``vit``)."""

    def __init__(self, arms: dict[str, tuple[nn.Module, nn.Module]], start: float, end: float):
        super().__init__({
            arm: nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(head))
            for arm, (backbone, head) in arms.items()
        })  # fmt: skip
        self.requires_grad_(False)
        self.start, self.end = float(start), float(end)

    def momentum(self, step: int, total_steps: float) -> float:
        """The momentum at ``step`` of a run of ``total_steps`` (the start value when the run
        length is unknown)."""
        if not math.isfinite(total_steps) or total_steps <= 1:
            return self.start
        total = int(total_steps)
        return float(cosine_schedule(min(step, total), total, self.start, self.end))

    @torch.no_grad()
    def outputs(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Each copy's outputs on every view: ``(cnn outputs, vit outputs)``."""
        return [self["cnn"](v) for v in views], [self["vit"](v) for v in views]

    @torch.no_grad()
    def follow(self, arms: dict[str, tuple[nn.Module, nn.Module]], momentum: float) -> None:
        """Move every copy's parameters towards its arm; copy buffers (BatchNorm statistics)."""
        for arm, online in arms.items():
            for source, target in zip(online, self[arm], strict=True):
                if next(source.parameters(), None) is not None:  # lightly needs a parameter
                    update_momentum(source, target, m=momentum)
                for t, o in zip(target.buffers(), source.buffers(), strict=True):
                    t.copy_(o)
