"""Stop on a non-finite loss, as DINO's reference loop does, without making the host wait.

A NaN or inf loss never recovers: every later step trains on garbage, and a checkpoint written
after it holds garbage too. Turning the loss into a Python bool every step would stop the CPU
until the GPU has finished the step (a host sync), so the CPU could not queue the next step's
kernels. Instead :class:`FiniteLossGuard` keeps its record on the loss's device (the first bad
global step, the loss there and which arm's outputs were non-finite; the last finite loss and
its step), updated with ``torch.where``, and reads it back in ONE transfer only when asked.

:class:`GuardsFiniteLoss` asks at the points where Lightning itself reads values back: at its
logging interval (``trainer.log_every_n_steps``), at each training epoch end, before every
checkpoint is written and when training ends. A bad step is therefore reported a few steps late,
naming the first bad step and the step it was noticed at; ``last.ckpt`` (which is never written
with non-finite weights, and never after a bad step) keeps the last good state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor

# Layout of the on-device record: these positions, then one flag per arm.
_FIRST_BAD, _BAD_LOSS, _LAST_STEP, _LAST_LOSS = range(4)


def _logs_at(trainer: L.Trainer, step: int) -> bool:
    """Lightning's own rule for writing on-step logs (``_LoggerConnector.should_update_logs``)
    at optimiser step count ``step``."""
    every = trainer.log_every_n_steps
    return bool(trainer.fast_dev_run) or trainer.should_stop or (every > 0 and step % every == 0)


def logs_at_step_end(trainer: L.Trainer) -> bool:
    """Whether Lightning writes the on-step logs of the batch that just ended, seen from
    ``on_train_batch_end``, where ``global_step`` already counts this batch's optimiser step."""
    return _logs_at(trainer, trainer.global_step)


def logs_this_step(trainer: L.Trainer) -> bool:
    """The same rule seen from ``training_step`` (before the optimiser step is counted): log
    per-step values that are not already device tensors (learning rates, schedules) only then,
    as each one is a host-to-device copy, which waits for the device too."""
    return _logs_at(trainer, trainer.global_step + 1)


@dataclass(frozen=True)
class BadStep:
    """What the guard found: the first non-finite step and what is known around it."""

    step: int
    loss: float
    bad_arms: tuple[str, ...]
    last_step: int | None
    last_loss: float | None


class FiniteLossGuard:
    """Records each training step's loss on its device; :meth:`verify` raises a
    ``FloatingPointError`` naming the first step whose loss was not finite.

    Args:
        method: named in the message (``CASS``, ``DINO``, ``fine-tuning``).
        advice: what to try, named in the message.
        kept: what still holds the last good state, named in the message.
    """

    def __init__(
        self, method: str, advice: str, kept: str = "last.ckpt holds the last good state"
    ) -> None:
        self.method, self.advice, self.kept = method, advice, kept
        self.arms: tuple[str, ...] = ()
        self._state: Tensor | None = None  # see the positions above
        self._bad_slots: Tensor | None = None  # which positions a bad step writes
        #: The global step of the last :meth:`verify` that found nothing (-1: none yet).
        self.verified_at = -1

    def reset(self) -> None:
        """Forget everything recorded (a new fit)."""
        self._state = self._bad_slots = None
        self.verified_at = -1

    def _start(self, device: torch.device, arms: tuple[str, ...]) -> Tensor:
        dtype = torch.float32 if device.type == "mps" else torch.float64  # steps stay exact
        state = torch.full((4 + len(arms),), float("nan"), dtype=dtype, device=device)
        state[_FIRST_BAD] = -1.0
        state[_LAST_STEP] = -1.0
        state[4:] = 0.0
        slots = torch.ones(state.shape, dtype=torch.bool, device=device)
        slots[_LAST_STEP] = False
        slots[_LAST_LOSS] = False
        self.arms, self._state, self._bad_slots = arms, state, slots
        return state

    def record(self, loss: Tensor, step: int, outputs: dict[str, Tensor] | None = None) -> None:
        """Note ``loss`` at global ``step`` (and whether each arm's ``outputs`` are finite)
        with device operations only: nothing here waits for the device."""
        arms = tuple(outputs or ())
        state = self._state
        if state is None or state.device != loss.device or arms != self.arms:
            state = self._start(loss.device, arms)
        value = loss.detach().reshape(()).to(state.dtype)
        finite = torch.isfinite(value)
        clean = state[_FIRST_BAD] < 0
        step_value = torch.full((), step, dtype=state.dtype, device=state.device)
        parts = [step_value, value, step_value, value]
        if outputs:
            parts += [~torch.isfinite(z.detach()).all() for z in outputs.values()]
        new = torch.stack([p.to(state.dtype) for p in parts])
        # Bad step while clean: write the bad slots; finite step while clean: the last-good ones.
        write = torch.where(self._bad_slots, clean & ~finite, clean & finite)
        self._state = torch.where(write, new, state)

    def first_bad(self) -> BadStep | None:
        """The first non-finite step recorded, or ``None``: ONE read from the device."""
        if self._state is None:
            return None
        values = self._state.tolist()
        if values[_FIRST_BAD] < 0:
            return None
        known = values[_LAST_STEP] >= 0
        return BadStep(
            step=int(values[_FIRST_BAD]),
            loss=values[_BAD_LOSS],
            bad_arms=tuple(a for a, flag in zip(self.arms, values[4:], strict=True) if flag),
            last_step=int(values[_LAST_STEP]) if known else None,
            last_loss=values[_LAST_LOSS] if known else None,
        )

    def message(self, bad: BadStep | None, now: int | None = None) -> str:
        """The error message for ``bad`` noticed at global step ``now`` (``bad`` None: another
        process found it)."""
        if bad is None:
            where = "by global step " + str(now) if now is not None else ""
            return (
                f"non-finite {self.method} loss on another process {where}. "
                f"{self.advice}; {self.kept}."
            )
        noticed = f" (noticed at step {now})" if now is not None and now > bad.step else ""
        arms = ""
        if self.arms:
            named = " and ".join(bad.bad_arms) if bad.bad_arms else "neither arm (the loss itself)"
            arms = f"non-finite output from {named}; "
        last = "no finite loss yet in this run"
        if bad.last_step is not None:
            last = f"last finite loss {bad.last_loss:.6g} at step {bad.last_step}"
        return (
            f"non-finite {self.method} loss ({bad.loss}) at global step {bad.step}{noticed}; "
            f"{arms}{last}. {self.advice}; {self.kept}."
        )

    def verify(self, now: int | None = None, trainer: L.Trainer | None = None) -> None:
        """Raise ``FloatingPointError`` if a non-finite loss was recorded. Under several
        processes (``trainer`` given) every process raises when any one found one."""
        bad = self.first_bad()
        found = bad is not None
        if trainer is not None and trainer.world_size > 1:
            found = trainer.strategy.reduce_boolean_decision(found, all=False)
        if found:
            raise FloatingPointError(self.message(bad, now))
        if now is not None:
            self.verified_at = now

    def check(self, loss: Tensor, step: int, outputs: dict[str, Tensor] | None = None) -> None:
        """:meth:`record` then :meth:`verify` at once (a host sync: for use outside a
        training loop, or where waiting does not matter)."""
        self.record(loss, step, outputs)
        self.verify(step)


class GuardsFiniteLoss:
    """Mixin for a LightningModule that holds a :class:`FiniteLossGuard` as ``self.finite``
    and calls ``self.finite.record(...)`` in its training step: reads the guard at Lightning's
    logging interval, at each training epoch end, before every checkpoint and at the end of
    training. Subclasses that define these hooks call ``super()``."""

    finite: FiniteLossGuard

    def verify_finite(self) -> None:
        """Raise now if a non-finite loss was recorded (one read from the device)."""
        trainer = getattr(self, "_trainer", None)
        now = trainer.global_step if trainer is not None else None
        self.finite.verify(now, trainer)

    def on_train_start(self) -> None:
        self.finite.reset()
        super().on_train_start()  # type: ignore[misc]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)  # type: ignore[misc]
        trainer = self.trainer  # type: ignore[attr-defined]
        if trainer.global_step != self.finite.verified_at and logs_at_step_end(trainer):
            self.verify_finite()

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # type: ignore[misc]
        self.verify_finite()

    def on_train_end(self) -> None:
        super().on_train_end()  # type: ignore[misc]
        self.verify_finite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this hook before it writes any checkpoint: never after a bad step.
        self.verify_finite()
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of ``module``'s floating-point parameters and buffers holding a NaN or inf (one
    read from the device for all of them)."""
    named = [
        (name, t)
        for name, t in (*module.named_parameters(), *module.named_buffers())
        if t.is_floating_point()
    ]
    if not named:
        return []
    flags = torch.stack([~torch.isfinite(t.detach()).all() for _, t in named]).tolist()
    return [name for (name, _), bad in zip(named, flags, strict=True) if bad]
