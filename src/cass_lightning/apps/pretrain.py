"""``cass-pretrain``: CASS pretraining driven by Hydra (``conf/pretrain.yaml``).

``pretrain(cfg)`` is the task; tests call it directly. ``main`` is the ``@hydra.main`` wrapper, so
overrides and ``-m`` sweeps work: ``cass-pretrain -m data.batch_size=8,16 trainer.max_epochs=1,2``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig

from cass_lightning.apps.common import (
    CONFIG_DIR,
    instantiate_group,
    print_config_tree,
    run_dir,
    seed_everything,
)
from cass_lightning.callbacks import ExportBackbones


def _refuse_to_overwrite(folder: Path) -> None:
    """A run never writes over another run's checkpoints or export."""
    for sub in ("checkpoints", "export"):
        target = folder / sub
        if target.is_dir() and any(target.iterdir()):
            raise FileExistsError(
                f"{target} already holds files from an earlier run; refusing to overwrite them. "
                "Start a new run (the default run folder is time-stamped) or set hydra.run.dir."
            )


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model, callbacks, loggers and trainer from ``cfg`` and fit.

    Returns the final metrics and where the run, checkpoints and export were written.
    """
    folder = run_dir(cfg)
    _refuse_to_overwrite(folder)
    if cfg.get("print_config", False):
        print_config_tree(cfg)
    seed_everything(cfg.get("seed"))

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model: L.LightningModule = instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_group(cfg.get("callbacks"))
    if cfg.get("rich_progress_bar", False) and cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({"seed": cfg.get("seed"), "data": dict(datamodule.hparams)})

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    elapsed = time.perf_counter() - start

    checkpoint = next((c for c in callbacks if isinstance(c, ModelCheckpoint)), None)
    exporter = next((c for c in callbacks if isinstance(c, ExportBackbones)), None)
    result: dict[str, Any] = {
        "run_dir": str(folder),
        "fit_seconds": elapsed,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "last_checkpoint": checkpoint.last_model_path if checkpoint else None,
        "best_checkpoint": checkpoint.best_model_path if checkpoint else None,
        "export_dir": str(exporter.exported_to) if exporter and exporter.exported_to else None,
    }
    if trainer.is_global_zero:
        _print_summary(result)
    return result


def _print_summary(result: dict[str, Any]) -> None:
    lines = [
        f"CASS pretraining finished in {result['fit_seconds']:.0f} s",
        f"  run folder:      {result['run_dir']}",
        f"  last checkpoint: {result['last_checkpoint'] or '-'}",
        f"  best checkpoint: {result['best_checkpoint'] or '-'}",
        f"  exported arms:   {result['export_dir'] or '-'}",
    ]
    metrics = result["metrics"]
    for key in ("train/loss_epoch", "train/cosine_epoch", "val/loss", "perf/images_per_s"):
        if key in metrics:
            lines.append(f"  {key}: {metrics[key]:.4f}")
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pretrain")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final training loss (for Hydra sweepers)."""
    result = pretrain(cfg)
    return result["metrics"].get("train/loss_epoch")


if __name__ == "__main__":
    main()
