"""Export the trained arms as plain timm weights when a fit completes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from cass_lightning.export import export_module


class ExportBackbones(L.Callback):
    """Writes ``cnn.safetensors``, ``vit.safetensors`` and ``meta.json`` when training ends.

    Runs only on a completed fit (not after an exception) and only on rank 0. The exported
    weights are those of the final model, the same state as ``last.ckpt``; which arms are written
    is the module's ``exportable()`` (CASS: both; DINO: its one arm).
    """

    def __init__(self, dirpath: str | Path, source: str | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.source = source
        self.exported_to: Path | None = None

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = self.source or str(trainer.default_root_dir)
        self.exported_to = export_module(pl_module, self.dirpath, source=source)
