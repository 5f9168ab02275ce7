"""Callbacks: export both backbones at the end of training, and measure throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from cass_lightning.export import export_backbones
from cass_lightning.modules.cass import batch_images


class ExportBackbones(L.Callback):
    """Writes ``cnn.safetensors``, ``vit.safetensors`` and ``meta.json`` when training ends.

    Runs only on a completed fit (not after an exception) and only on rank 0. The exported
    weights are those of the final model, the same state as ``last.ckpt``.
    """

    def __init__(self, dirpath: str | Path, source: str | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.source = source
        self.exported_to: Path | None = None

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = self.source or str(trainer.default_root_dir)
        self.exported_to = export_backbones(pl_module, self.dirpath, source=source)


class ImagesPerSecond(L.Callback):
    """Logs ``perf/images_per_s`` and ``perf/epoch_s`` per training epoch.

    Counts the images this process trained on between the start and the end of the epoch, so
    the figure includes data loading, the optimiser step and logging: what a user waits for.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._images += int(batch_images(batch).shape[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        pl_module.log_dict(
            {"perf/images_per_s": self._images / elapsed, "perf/epoch_s": elapsed},
            on_step=False,
            on_epoch=True,
        )
