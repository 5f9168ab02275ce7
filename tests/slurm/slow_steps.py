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


class PauseAfterTraining(L.Callback):
    """Hold a finished run twice so the test can signal it there: in ``on_train_end`` (the
    export is written in the same hook) and at the interpreter's exit, after the app has
    returned. At each, write ``<folder>/<name>.here`` and wait for ``<folder>/<name>.go``."""

    def __init__(self, folder: str, timeout: float = 240.0) -> None:
        self.folder = folder
        self.timeout = float(timeout)

    def _hold(self, name: str) -> None:
        from pathlib import Path

        here = Path(self.folder)
        (here / f"{name}.here").write_text("")
        end = time.monotonic() + self.timeout
        while not (here / f"{name}.go").exists() and time.monotonic() < end:
            time.sleep(0.2)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        import atexit

        self._hold("exporting")
        atexit.register(self._hold, "exiting")
