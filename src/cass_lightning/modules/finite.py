"""Stop on a non-finite loss, as DINO's reference loop does, naming the last good step.

A NaN or inf loss never recovers: every later step trains on garbage, and a checkpoint written
after it holds garbage too. Both pretraining modules raise at once; ``last.ckpt`` (which is never
written with non-finite weights) keeps the last good state.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FiniteLossGuard:
    """Remembers the last finite loss and raises a ``FloatingPointError`` on the first bad one."""

    def __init__(self, method: str, advice: str) -> None:
        self.method, self.advice = method, advice
        self.last: dict[str, float] = {}

    def describe_last(self) -> str:
        if not self.last:
            return "no finite loss yet in this run"
        return f"last finite loss {self.last['loss']:.6g} at step {int(self.last['step'])}"

    def check(self, loss: Tensor, step: int, outputs: dict[str, Tensor] | None = None) -> None:
        """Record ``loss`` at ``step``, or raise naming the step, the arm(s) whose ``outputs``
        are non-finite, and the last good loss."""
        if torch.isfinite(loss):
            self.last = {"step": step, "loss": float(loss.detach())}
            return
        where = ""
        if outputs:
            bad = [arm for arm, z in outputs.items() if not bool(torch.isfinite(z).all())]
            arms = " and ".join(bad) if bad else "neither arm (the loss itself)"
            where = f"non-finite output from {arms}; "
        raise FloatingPointError(
            f"non-finite {self.method} loss ({float(loss.detach())}) at global step {step}; "
            f"{where}{self.describe_last()}. {self.advice}; last.ckpt holds the last good state."
        )
