"""How long each training step waits for its batch: the loader's share of the training loop.

Host-side clocks only (``time.perf_counter`` around Lightning's batch hooks): nothing here asks
the device for a value, so the callback adds no synchronisation to a step.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L

from cass_lightning.batches import batch_images


class DataWait(L.Callback):
    """Logs ``perf/data_wait_s`` (mean seconds a step waited for its batch since the last log,
    every ``log_every_n_steps``) and ``perf/data_wait_share`` per epoch; keeps the attempt's
    totals (``share``, ``images``, ``steps``) for the run's summary.

    The wait of a step is the time from the end of the previous training batch (or the epoch's
    start) to the start of this one: fetching from the loader and the copy to the device. On a
    GPU the host queues work ahead of the device, so a wait here means the loader, not the
    model, held the step up. ``steps`` counts optimiser steps of this attempt (a resumed run
    starts from the checkpoint's global step).
    """

    def __init__(self) -> None:
        self.wait_seconds = 0.0
        self.loop_seconds = 0.0
        self.images = 0
        self.batches = 0
        self.start_step: int | None = None
        self.end_step: int | None = None
        self._epoch_start = 0.0
        self._last_end: float | None = None
        self._epoch_wait = 0.0
        self._since_log = 0.0
        self._batches_since_log = 0

    @property
    def steps(self) -> int:
        """Optimiser steps taken in this attempt (0 before training starts)."""
        if self.start_step is None or self.end_step is None:
            return 0
        return self.end_step - self.start_step

    @property
    def share(self) -> float | None:
        """Fraction of the training loop's time spent waiting for batches (``None`` before one)."""
        return self.wait_seconds / self.loop_seconds if self.loop_seconds > 0 else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = self.end_step = int(trainer.global_step)
        # A run resumed mid-epoch continues that epoch without a new epoch start.
        self._epoch_start = self._last_end = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_end = time.perf_counter()
        self._epoch_wait = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            wait = now - self._last_end
            self._epoch_wait += wait
            self._since_log += wait
            self._batches_since_log += 1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        # every process sees its own share of the global batch: the run's images are all of them
        self.images += int(batch_images(batch).shape[0]) * max(1, int(trainer.world_size))
        self.batches += 1
        self.end_step = int(trainer.global_step)
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        if self._batches_since_log >= every:
            mean = self._since_log / self._batches_since_log
            pl_module.log("perf/data_wait_s", mean, on_step=True, on_epoch=False)
            self._since_log, self._batches_since_log = 0.0, 0
        self._last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_end is None:
            return
        loop = max(self._last_end - self._epoch_start, 1e-9)
        self.wait_seconds += self._epoch_wait
        self.loop_seconds += loop
        pl_module.log("perf/data_wait_share", self._epoch_wait / loop, on_step=False,
                      on_epoch=True)  # fmt: skip
        self._epoch_wait = 0.0
        self._epoch_start = self._last_end = time.perf_counter()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        # A stopped epoch still counts: its waits and loop time so far go into the totals.
        if self._last_end is not None:
            self.wait_seconds += self._epoch_wait
            self.loop_seconds += max(self._last_end - self._epoch_start, 0.0)
            self._epoch_wait = 0.0
            self._epoch_start = self._last_end
