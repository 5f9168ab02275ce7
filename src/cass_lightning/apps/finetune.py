"""``cass-finetune``: fine-tune one arm of a CASS export (or a baseline) with Hydra.

``finetune(cfg)`` is the task; tests call it directly. ``main`` is the ``@hydra.main`` wrapper,
so sweeps run each point in its own folder::

    cass-finetune -m arm=cnn,vit data.label_fraction=0.1,1.0 seed=0,1 weights=<export folder>

Each run trains on the ``label_fraction`` labelled subset, validates every epoch, stops early on
``early_stopping.monitor``, evaluates the best validation checkpoint on the test split (the
validation split when the dataset has none, as ``results.json`` then says) and writes
``results.json`` in its folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from cass_lightning.apps.common import CONFIG_DIR, print_config_tree, run_dir, seed_everything
from cass_lightning.data.base import MedicalDataModule
from cass_lightning.loggers import build_loggers, logger_context
from cass_lightning.modules.classifier import ClassifierModule, pretrained_arm_info
from cass_lightning.runtime import resolve_precision

RESULTS_FILE = "results.json"
WEIGHT_KEYWORDS = ("imagenet", "random")


def resolve_weights(weights: Any, weights_file: str | None) -> tuple[str, str | None]:
    """``(init, path)`` from the ``weights`` setting: a folder, a ``.ckpt`` or a keyword."""
    if weights is None or str(weights).strip() == "":
        raise ValueError(
            "set weights=<export folder> | <CASS checkpoint .ckpt> | imagenet | random "
            "(e.g. weights=runs/pretrain/<run>/export)"
        )
    text = str(weights)
    if text == "random":
        return "random", None
    if text == "imagenet":
        return "imagenet", weights_file
    if text.endswith(".ckpt"):
        return "checkpoint", text
    return "export", text


def _refuse_to_overwrite(folder: Path) -> None:
    """A run never writes over another run's results or checkpoints."""
    checkpoints = folder / "checkpoints"
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.iterdir())
    if (folder / RESULTS_FILE).exists() or has_checkpoints:
        raise FileExistsError(
            f"{folder} already holds a fine-tuning run; refusing to overwrite it. Start a new "
            "run (the default run folder is time-stamped) or set hydra.run.dir"
        )


def _finite(value: Any) -> float | None:
    """A float for JSON, or None for NaN/inf (JSON has no NaN)."""
    number = float(value)
    return number if math.isfinite(number) else None


def build_model(cfg: DictConfig, init: str, weights: str | None, dm: MedicalDataModule) -> Any:
    """The ClassifierModule of ``cfg.model`` for the data's classes and labels."""
    model_cfg: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[assignment]
    model_cfg.pop("weights_file", None)
    use_weights = bool(model_cfg.pop("class_weights", True))
    class_weights = dm.class_weights().tolist() if use_weights else None
    return instantiate(
        model_cfg,
        init=init,
        weights=weights,
        num_classes=dm.num_classes,
        multi_label=dm.multi_label,
        class_weights=class_weights,
        _convert_="all",
    )


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model and trainer from ``cfg``; fit, test the best checkpoint, save results.

    Returns what ``results.json`` holds.
    """
    folder = run_dir(cfg)
    _refuse_to_overwrite(folder)
    init, weights = resolve_weights(cfg.get("weights"), cfg.model.get("weights_file"))
    info = pretrained_arm_info(init, weights, cfg.arm)  # fails now on a bad path, naming it
    if info:
        with open_dict(cfg):
            cfg.model.img_size = info["img_size"]  # the data follows the pretraining size
    if cfg.get("print_config", False):
        print_config_tree(cfg)
    seed_everything(cfg.get("seed"))

    dm: MedicalDataModule = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    model: ClassifierModule = build_model(cfg, init, weights, dm)
    stopping = cfg.early_stopping
    if stopping.mode != model.monitor_mode:
        raise ValueError(
            f"early_stopping.mode={stopping.mode} but {stopping.monitor} is best when "
            f"{'lower' if model.monitor_mode == 'min' else 'higher'}; use {model.monitor_mode}"
        )
    best = ModelCheckpoint(
        dirpath=folder / "checkpoints", filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False, monitor=stopping.monitor, mode=stopping.mode, save_top_k=1,
    )  # fmt: skip
    early = EarlyStopping(
        monitor=stopping.monitor, mode=stopping.mode, patience=int(stopping.patience)
    )
    loggers = build_loggers(cfg.get("logger"), **logger_context(cfg))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator")),
        callbacks=[best, early],
        logger=loggers or False,
        _convert_="all",
    )
    dm.trainer = trainer  # the loaders split the global batch over the trainer's devices
    val_loader = dm.val_dataloader()
    if not val_loader:
        raise ValueError(
            f"{dm.root} has no validation split; fine-tuning early-stops and picks its "
            "checkpoint on validation. Set data.val_fraction > 0"
        )
    test_loader, test_split = dm.test_dataloader(), "test"
    if not test_loader:
        test_loader, test_split = val_loader, "val"
        if rank_zero_only.rank == 0:
            print("no test split in this dataset: the best checkpoint is evaluated on validation")
    for logger in trainer.loggers:
        logger.log_hyperparams({"seed": cfg.get("seed"), "data": dict(dm.hparams)})

    trainer.fit(model, train_dataloaders=dm.labelled_train_dataloader(), val_dataloaders=val_loader)
    ckpt_path = "best" if best.best_model_path else None
    tested = trainer.test(model, dataloaders=test_loader, ckpt_path=ckpt_path, verbose=False)
    hp = model.hparams
    result: dict[str, Any] = {
        "run_dir": str(folder),
        "arm": hp.arm,
        "mode": hp.mode,
        "init": init,
        "weights": weights,
        "timm_name": hp.timm_name,
        "img_size": hp.img_size,
        "dataset": dm.report.dataset if dm.report else dm.layout,
        "num_classes": dm.num_classes,
        "multi_label": dm.multi_label,
        "label_fraction": float(dm.hparams.label_fraction),
        "labelled_images": len(dm.labelled),
        "seed": cfg.get("seed"),
        "test_split": test_split,
        "metrics": {k: _finite(v) for k, v in (tested[0] if tested else {}).items()},
        "monitor": stopping.monitor,
        "best_val": _finite(best.best_model_score) if best.best_model_score is not None else None,
        "best_checkpoint": best.best_model_path or None,
        "epochs_run": int(trainer.current_epoch),
        "stopped_early": bool(early.stopped_epoch),
    }
    if trainer.is_global_zero:
        (folder / RESULTS_FILE).write_text(json.dumps(result, indent=2))
        _print_summary(result)
    return result


def _print_summary(result: dict[str, Any]) -> None:
    lines = [
        f"fine-tuned the {result['arm']} arm ({result['timm_name']}, init {result['init']}, "
        f"{result['mode']}) for {result['epochs_run']} epochs",
        f"  run folder:      {result['run_dir']}",
        f"  best checkpoint: {result['best_checkpoint'] or '-'}",
        f"  evaluated on:    {result['test_split']} split",
    ]
    for key, value in sorted(result["metrics"].items()):
        lines.append(f"  {key}: {'-' if value is None else f'{value:.4f}'}")
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="finetune")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the monitored metric on the test split (for sweepers)."""
    result = finetune(cfg)
    return result["metrics"].get(str(cfg.early_stopping.monitor).replace("val/", "test/", 1))


if __name__ == "__main__":
    main()
