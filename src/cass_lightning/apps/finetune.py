"""``cass-finetune``: fine-tune one arm of a CASS export (or a baseline) with Hydra.

``finetune(cfg)`` is the task; tests call it directly. ``main`` is the ``@hydra.main`` wrapper,
so sweeps run each point in its own folder::

    cass-finetune -m arm=cnn,vit data.label_fraction=0.1,1.0 seed=0,1 weights=<export folder>

Each run trains on the ``label_fraction`` labelled subset, validates every epoch, stops early on
``early_stopping.monitor``, evaluates the best validation checkpoint on the test split (the
validation split when the dataset has none, as ``results.json`` then says) and writes
``results.json`` in its folder, with what the backbone was loaded from (``weights_loaded``: file,
SHA-256, keys loaded and adapted), the run's ``run_id`` (drawn at its start, so copies of the
folder are recognised as one run), its ``settings_digest`` (everything but the seed and paths)
and the ``data_fingerprint`` of the files it used: ``cass-report`` averages only seeds of one
setting on one dataset.

As ``cass-pretrain``: the folder is claimed (a second run into it is refused), the console is
copied to ``<run>/finetune.log``, a refused input exits 1 with one named line, and SIGINT/SIGTERM
stop at the end of a batch (exit 130/143; fine-tuning has no resume: start it again).
"""

from __future__ import annotations

import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from cass_lightning.apps.cluster.requeue import (
    finished_before_requeue,
    record_job,
    set_aside_requeued_attempt,
)
from cass_lightning.apps.run.common import (
    CONFIG_DIR,
    check_run_settings,
    finite_or_none,
    print_config_tree,
    refuse_to_overwrite,
    report_run,
    run_dir,
    save_run_config,
    seed_everything,
)
from cass_lightning.apps.run.console import (
    RunStopped,
    StopSignals,
    entry_point,
    hold_run_folder,
    reported_errors,
)
from cass_lightning.apps.run.loggers import build_loggers, logger_context
from cass_lightning.apps.run.speed import check_speed, speed_settings, uses_cuda, warn_slow_bf16
from cass_lightning.callbacks import DataWait, LoopTimer, atomic_checkpoint_plugin
from cass_lightning.callbacks.progress import progress_bar
from cass_lightning.data.datamodule import MedicalDataModule
from cass_lightning.encoders import record_of
from cass_lightning.io import atomic_write_json, file_sha256, read_json
from cass_lightning.machine import trainer_machine
from cass_lightning.modules.arm_source import ArmSource, parse_weights, read_arm_source
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.records import plain_floats, plain_int
from cass_lightning.report.identity import settings_digest, weights_hashes
from cass_lightning.report.validate import check_result
from cass_lightning.runtime import apply_speed_settings, resolve_precision

RESULTS_FILE = "results.json"
LOG_FILE = "finetune.log"
KEPT = (RESULTS_FILE, "checkpoints")


def build_data(
    cfg: DictConfig, source: ArmSource, loader: dict[str, bool] | None = None
) -> MedicalDataModule:
    """The datamodule, fed as the weights need: their input size and, for pretrained weights,
    the normalisation they were trained with. Its training loader is the labelled subset.
    ``loader``: the resolved ``pin_memory`` / ``persistent_workers`` (speed settings)."""
    # Keywords of instantiate become config nodes that OmegaConf resolves: only numbers (checked
    # as read, converted here) ever reach it from the weights' files, never their strings.
    follow: dict[str, Any] = {"train_subset": "labelled"}
    if source.img_size is not None:
        follow["img_size"] = plain_int(source.img_size, "img_size of the weights")
    if source.mean is not None and source.std is not None:
        follow["mean"] = plain_floats(source.mean, "mean of the weights")
        follow["std"] = plain_floats(source.std, "std of the weights")
    changed = {k: v for k, v in follow.items() if k in cfg.data and cfg.data[k] != v}
    if changed and rank_zero_only.rank == 0:
        print(f"data follows the {source.init} weights: " +
              ", ".join(f"{k}={v}" for k, v in changed.items()))  # fmt: skip
    return instantiate(cfg.data, **follow, **(loader or {}), _convert_="all")


def build_model(cfg: DictConfig, source: ArmSource, dm: MedicalDataModule) -> ClassifierModule:
    """The ClassifierModule of ``cfg.model`` for the data's classes and labels."""
    model_cfg: dict[str, Any] = OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[assignment]
    for key in ("weights_file", "cnn", "vit"):  # read by read_arm_source
        model_cfg.pop(key, None)
    use_weights = bool(model_cfg.pop("class_weights", True))
    module = get_class(model_cfg.pop("_target_"))
    model_cfg.update(timm_name=source.timm_name, img_size=source.img_size)
    # Called directly rather than through instantiate, which would turn ``source`` into a dict.
    return module(
        **model_cfg,
        init=source.init,
        weights=source.weights,
        num_classes=dm.num_classes,
        multi_label=dm.multi_label,
        class_weights=dm.class_weights().tolist() if use_weights else None,
        source=source,
    )


def weights_loaded(source: ArmSource, model: ClassifierModule) -> dict[str, Any]:
    """What the backbone was initialised from (see :func:`cass_lightning.encoders.record_of`);
    its classifier is always a fresh head for the new classes."""
    if source.init == "checkpoint":
        path = Path(str(source.weights)).resolve()
        record = {"init": "checkpoint", "file": str(path), "sha256": file_sha256(path),
                  "keys_loaded": len(model.backbone.state_dict()), "keys_adapted": {}}  # fmt: skip
    else:
        record = record_of(model.backbone)
    return {**record, "head": f"fresh ({model.hparams.num_classes} classes)"}


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """``cfg`` as plain values, resolved where it can be (outside a Hydra job, interpolations
    of Hydra's runtime stay as written: they name paths, which the settings digest leaves out)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # e.g. ${hydra:...} outside a Hydra job
        plain = OmegaConf.to_container(cfg, resolve=False)
    return plain if isinstance(plain, dict) else {}  # type: ignore[return-value]


def baseline_name(cfg: DictConfig, init: str) -> str | None:
    """The timm encoder asked for: ``model.timm_name`` for either arm, else for a baseline
    (``imagenet``/``random``) the arm's ``model.cnn`` / ``model.vit``, named as in pretraining
    so ``debug=tiny`` and experiments apply; ``None`` lets pretrained weights say it."""
    named = cfg.model.get("timm_name")
    if named or init not in ("imagenet", "random"):
        return named
    return cfg.model.get(cfg.arm)


def finetune(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model and trainer from ``cfg``; fit, test the best checkpoint, save results.

    Returns what ``results.json`` holds. Raises :class:`~.run.console.RunStopped` when
    SIGINT/SIGTERM stopped it.
    """
    folder = run_dir(cfg)
    if finished_before_requeue(folder, RESULTS_FILE):
        print(f"Requeued SLURM job: {folder} had already finished; nothing to do.")
        done = folder / RESULTS_FILE  # read back: checked as the report checks it
        return check_result(read_json(done, "fine-tuning results"), str(done))
    set_aside_requeued_attempt(folder, (*KEPT, "csv"))  # a requeued SLURM job starts again
    refuse_to_overwrite(folder, KEPT)
    check_run_settings(cfg)
    check_speed(cfg)
    init, weights = parse_weights(cfg.get("weights"), cfg.model.get("weights_file"))
    model_cfg = cfg.model
    # Read the weights' description once; a bad path fails here, before any data is built.
    # Pretrained weights set the input size (model.img_size is for imagenet/random).
    size = model_cfg.get("img_size") if init in ("imagenet", "random") else None
    source = read_arm_source(cfg.arm, init, weights, baseline_name(cfg, init), size,
                             model_cfg.get("in_chans", 3))  # fmt: skip
    with hold_run_folder(folder, LOG_FILE, KEPT) as stop:
        record_job(folder)
        return _finetune(cfg, folder, init, weights, source, stop)


@dataclass
class Built:
    """What a fine-tuning run built from its config, before it fits."""

    dm: MedicalDataModule
    model: ClassifierModule
    trainer: L.Trainer
    best: ModelCheckpoint
    early: EarlyStopping
    timer: LoopTimer
    waits: DataWait
    speed: dict[str, bool]
    machine: dict[str, Any]


def _finetune(
    cfg: DictConfig,
    folder: Path,
    init: str,
    weights: str | None,
    source: ArmSource,
    stop: StopSignals,
) -> dict[str, Any]:
    """The run inside its claimed folder: build -> fit -> write (checked by :func:`finetune`)."""
    if cfg.get("print_config", False):
        print_config_tree(cfg)
    run_id = uuid.uuid4().hex  # at the start: every copy of this run's folder carries it
    seed_everything(cfg.get("seed"))
    built = build(cfg, folder, source)
    stop.trainer = built.trainer
    test_split, tested = fit_and_test(built, folder, stop)
    result = results(cfg, built, run_id, folder, init, weights, source, test_split, tested)
    if built.trainer.is_global_zero:
        write_results(folder, result)
    return result


def build(cfg: DictConfig, folder: Path, source: ArmSource) -> Built:
    """Data, model (the two checked against each other and the early stopping), loggers and
    trainer; the run's config is saved once the checks passed."""
    accelerator = cfg.trainer.get("accelerator")
    precision = resolve_precision(cfg.trainer.get("precision"), accelerator)
    on_cuda = uses_cuda(accelerator)
    speed = speed_settings(cfg, precision, on_cuda)
    loader = {k: speed[k] for k in ("pin_memory", "persistent_workers")}
    dm = build_data(cfg, source, loader)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(cfg, source, dm)
    apply_speed_settings(speed, model, on_cuda)
    stopping = cfg.early_stopping
    if stopping.mode != model.monitor_mode:
        raise ValueError(
            f"early_stopping.mode={stopping.mode} but {stopping.monitor} is best when "
            f"{'lower' if model.monitor_mode == 'min' else 'higher'}; use {model.monitor_mode}"
        )
    if not dm.split_indices("val").size:
        raise ValueError(
            f"{dm.root} has no validation split; fine-tuning early-stops and picks its "
            "checkpoint on validation. Set data.val_fraction > 0"
        )
    best = ModelCheckpoint(
        dirpath=folder / "checkpoints", filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False, monitor=stopping.monitor, mode=stopping.mode, save_top_k=1,
    )  # fmt: skip
    early = EarlyStopping(
        monitor=stopping.monitor, mode=stopping.mode, patience=int(stopping.patience)
    )
    save_run_config(folder, cfg)  # .hydra/*.yaml, written now that the folder is this run's
    loggers = build_loggers(cfg.get("logger"), **logger_context(cfg))
    on_gpu = accelerator in ("gpu", "cuda", "mps") or (
        accelerator in (None, "auto") and torch.cuda.is_available()
    )
    warn_slow_bf16(precision, on_cpu=not on_gpu)
    timer, waits = LoopTimer(), DataWait()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=precision,
        benchmark=speed["cudnn_benchmark"] if on_cuda else None,
        callbacks=[best, early, timer, waits]  # the bar reads the loss back at the logging steps
        + ([progress_bar(rich=False)] if cfg.trainer.get("enable_progress_bar", True) else []),
        logger=loggers or False,
        plugins=[atomic_checkpoint_plugin()],  # atomic saves; "best" reloaded weights_only
        _convert_="all",
    )
    machine = trainer_machine(trainer)  # precision, device, processes, versions in use
    for logger in trainer.loggers:
        logger.log_hyperparams({"seed": cfg.get("seed"), "data": dict(dm.hparams),
                                "machine": machine})  # fmt: skip
    return Built(dm, model, trainer, best, early, timer, waits, speed, machine)


def fit_and_test(built: Built, folder: Path, stop: StopSignals) -> tuple[str, list[Any]]:
    """Fit, then test the best checkpoint on the test split (validation when there is none);
    ``(split tested, Lightning's test results)``. A stop by signal raises ``RunStopped``."""
    trainer, dm, model = built.trainer, built.dm, built.model
    try:
        trainer.fit(model, datamodule=dm)
        stop.fitted()  # a scheduler's warning signal from now on is ignored
        test_split = "test" if dm.split_indices("test").size else "val"
        if test_split == "val" and rank_zero_only.rank == 0:
            print("no test split in this dataset: the best checkpoint is evaluated on validation")
        loader = dm.test_dataloader() if test_split == "test" else dm.val_dataloader()
        ckpt_path = "best" if built.best.best_model_path else None
        tested = trainer.test(model, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
    except SIGTERMException:  # SIGTERM, or SIGINT routed to it by StopSignals
        name = signal.Signals(stop.received or signal.SIGTERM).name
        raise RunStopped(
            stop.received or signal.SIGTERM,
            f"Stopped by {name} at global step {trainer.global_step}; fine-tuning does not "
            f"resume: start it again into a new folder (nothing in {folder} is a result).",
        ) from None
    return test_split, tested


def results(
    cfg: DictConfig, built: Built, run_id: str, folder: Path, init: str, weights: str | None,
    source: ArmSource, test_split: str, tested: list[Any],
) -> dict[str, Any]:  # fmt: skip
    """What ``results.json`` holds: the run's setting, metrics, costs and machine."""
    dm, model, best, stopping = built.dm, built.model, built.best, cfg.early_stopping
    hp = model.hparams
    result: dict[str, Any] = {
        "run_id": run_id,
        "run_dir": str(folder),
        "arm": hp.arm,
        "mode": hp.mode,
        "init": init,
        "weights": weights,
        "weights_loaded": weights_loaded(source, model),
        "method": source.method,
        "timm_name": hp.timm_name,
        "img_size": hp.img_size,
        "dataset": dm.report.dataset if dm.report else dm.layout,
        "layout": getattr(dm, "layout", None),  # the report chooses the metric by it
        "num_classes": dm.num_classes,
        "multi_label": dm.multi_label,
        "label_fraction": float(dm.hparams.label_fraction),
        "labelled_images": len(dm.labelled),
        "seed": cfg.get("seed"),
        "test_split": test_split,
        "metrics": {k: finite_or_none(v) for k, v in (tested[0] if tested else {}).items()},
        "monitor": stopping.monitor,
        "best_val": finite_or_none(best.best_model_score)
        if best.best_model_score is not None
        else None,
        "best_checkpoint": best.best_model_path or None,
        "epochs_run": int(built.trainer.current_epoch),
        "stopped_early": bool(built.early.stopped_epoch),
        "loop_seconds": built.timer.seconds,
        "data_wait_share": built.waits.share,
        "speed": built.speed,
        "precision": built.machine["precision"],
        "machine": built.machine,  # where the metrics and times above were measured
        # classes, per_class, confusion (of the test pass above) and the labelled subset's seed
        **model.per_class_results(dm.classes, dm.hparams.label_seed),
        "data_fingerprint": dm.fingerprint,
    }
    # What a report groups by: seeds of one setting on one dataset share a cell, nothing else.
    result["settings_digest"] = settings_digest(plain_config(cfg), weights_hashes(result))
    return result


def write_results(folder: Path, result: dict[str, Any]) -> None:
    """``results.json``, and what the run did, at the terminal."""
    atomic_write_json(folder / RESULTS_FILE, result)
    report_run(
        f"fine-tuned the {result['arm']} arm ({result['timm_name']}, init {result['init']}, "
        f"{result['mode']}) for {result['epochs_run']} epochs",
        {"run folder": result["run_dir"], "best checkpoint": result["best_checkpoint"],
         "evaluated on": f"{result['test_split']} split"},
        result["metrics"],
    )  # fmt: skip


@entry_point  # a command line Hydra cannot compose exits 2
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="finetune")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the monitored metric on the test split (for sweepers).
    Exit codes: 0 done, 1 refused input (named), 2 usage error, 130/143 stopped by a signal."""
    with reported_errors():
        result = finetune(cfg)
    return result["metrics"].get(str(cfg.early_stopping.monitor).replace("val/", "test/", 1))


if __name__ == "__main__":
    main()
