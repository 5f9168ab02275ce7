"""A callback for the time-limit test's jobs: every training step takes at least a fixed time,
so a job outlasts its time limit on any machine, however fast (sleeping costs no CPU)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class SleepEachStep(L.Callback):
    """Sleep ``seconds`` after every training batch."""

    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        time.sleep(self.seconds)
