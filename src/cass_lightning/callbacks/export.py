"""Export the trained arms as plain timm weights when a fit completes, and keep what the arms
were initialised from in every checkpoint (so an export from any checkpoint can say it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from cass_lightning.export import export_module, weights_init
from cass_lightning.machine import device_label, trainer_machine
from cass_lightning.weights import RECORD_ATTR

#: The checkpoint key holding each arm's init record (see :func:`cass_lightning.weights.record_of`).
WEIGHTS_INIT_KEY = "weights_init"
#: The checkpoint key holding what an export's model card tells of the run (data, settings).
CONTEXT_KEY = "export_context"


def training_context(trainer: L.Trainer) -> dict[str, Any]:
    """What the model cards tell of a pretraining run: its data (name, fingerprint), the
    settings that matter (epochs, batch, size, precision) and the device it ran on."""
    dm = getattr(trainer, "datamodule", None)
    hp = dict(getattr(dm, "hparams", None) or {})
    report = getattr(dm, "report", None)
    machine = trainer_machine(trainer)
    return {
        "data": {"name": getattr(report, "dataset", None) or hp.get("layout"),
                 "fingerprint": getattr(dm, "fingerprint", None)},
        "settings": {"epochs planned": trainer.max_epochs, "epochs trained":
                     int(trainer.fit_loop.epoch_progress.current.processed),
                     "optimiser steps": int(trainer.global_step),
                     "batch size": hp.get("batch_size"), "image size": hp.get("img_size"),
                     "precision": machine["precision"], "processes": machine["processes"]},
        "device": device_label(machine),
    }  # fmt: skip


class ExportBackbones(L.Callback):
    """Writes ``cnn.safetensors``, ``vit.safetensors`` and ``meta.json`` when training ends.

    Runs only on a completed fit (not after an exception, SIGTERM included) and only on rank 0.
    The exported weights are those of the final model, the same state as ``last.ckpt``; which
    arms are written is the module's ``exportable()`` (CASS: both; DINO: its one arm).

    Every checkpoint saved during the fit also gets ``weights_init``: what each arm started
    from (weights file, SHA-256, keys loaded and adapted). A resumed run takes it back from its
    checkpoint, so its export names the original init, not a file that may have changed since.
    """

    def __init__(self, dirpath: str | Path, source: str | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.source = source
        self.exported_to: Path | None = None

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = self.source or str(trainer.default_root_dir)
        context = training_context(trainer)
        self.exported_to = export_module(pl_module, self.dirpath, source=source, context=context)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        exportable = getattr(pl_module, "exportable", None)
        if callable(exportable):
            checkpoint[WEIGHTS_INIT_KEY] = weights_init(exportable()[0])
            checkpoint[CONTEXT_KEY] = training_context(trainer)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        records = checkpoint.get(WEIGHTS_INIT_KEY)
        exportable = getattr(pl_module, "exportable", None)
        if isinstance(records, dict) and callable(exportable):
            for arm, exported in exportable()[0].items():
                if isinstance(records.get(arm), dict):
                    setattr(exported.backbone, RECORD_ATTR, dict(records[arm]))
