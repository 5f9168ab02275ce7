"""Counting the calls that make the host wait for a device (``item``, ``bool``, ``float``,
``int``, ``tolist``, ``cpu``, ``numpy``) while a Trainer trains, on CPU.

On a GPU each of these stops the CPU from queueing the next kernels until the device has
finished; on CPU they cost nothing, but a ``TorchFunctionMode`` sees them all the same, so a CPU
test can hold the training step to "no host sync". torch.optim's own host-side step counters
(Adam's ``step`` lives on the CPU) are not counted.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from torch import Tensor
from torch.overrides import TorchFunctionMode

#: The tensor methods that read a value back to the host.
SYNC_CALLS = {
    Tensor.item: "item",
    Tensor.__bool__: "bool",
    Tensor.__float__: "float",
    Tensor.__int__: "int",
    Tensor.tolist: "tolist",
    Tensor.cpu: "cpu",
    Tensor.numpy: "numpy",
}


def _in_optimizer(filename: str) -> bool:
    """Whether the call comes from torch.optim's own code (its step counters). Only the direct
    caller is looked at: Lightning runs the whole training step inside ``optimizer.step``."""
    return "torch/optim/" in filename.replace("\\", "/")


class HostSyncCounter(TorchFunctionMode):
    """Records ``(call, phase, where)`` for each host-sync call while ``active``; ``phase`` is
    what the code was doing (set by :class:`CountSyncsDuringTraining`)."""

    def __init__(self, active: bool = False) -> None:
        super().__init__()
        self.active = active
        self.phase = "steps"
        self.calls: list[tuple[str, str, str]] = []

    def count(self, phase: str | None = None) -> int:
        return sum(1 for _, p, _ in self.calls if phase is None or p == phase)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = SYNC_CALLS.get(func)
        if self.active and name is not None:
            caller = sys._getframe(1)
            if not _in_optimizer(caller.f_code.co_filename):
                where = f"{caller.f_code.co_filename.rsplit('/', 1)[-1]}:{caller.f_lineno}"
                self.calls.append((name, self.phase, where))
        return func(*args, **(kwargs or {}))


class CountSyncsDuringTraining(L.Callback):
    """Turns ``counter`` on from the first training batch (:func:`count_host_syncs` turns it
    off before Lightning's teardown): phase
    ``steps`` in training batches (step, hooks, logging), ``epoch ends`` from a training epoch's
    end (callbacks' hooks run before the module's) to the next batch, and training's end."""

    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.counter.active, self.counter.phase = True, "steps"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counter.phase = "epoch ends"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counter.phase = "epoch ends"


def count_host_syncs(trainer: L.Trainer, model: L.LightningModule, loader: Any) -> HostSyncCounter:
    """Fit ``model`` with ``trainer`` (which must hold a :class:`CountSyncsDuringTraining`)
    and return its counter."""
    counter = next(c for c in trainer.callbacks if isinstance(c, CountSyncsDuringTraining)).counter
    teardown = trainer.strategy.teardown

    def stop_counting_then_teardown() -> None:  # after the last hook: the model goes to the CPU
        counter.active = False
        teardown()

    trainer.strategy.teardown = stop_counting_then_teardown
    with counter:
        trainer.fit(model, loader)
    return counter
