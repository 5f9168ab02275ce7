"""``cass-pretrain``: CASS pretraining driven by Hydra (``conf/pretrain.yaml``).

``pretrain(cfg)`` is the task; tests call it directly. ``main`` is the ``@hydra.main`` wrapper, so
overrides and ``-m`` sweeps work: ``cass-pretrain -m data.batch_size=8,16 trainer.max_epochs=1,2``.

A run first checks what it can without writing (a resumed folder and its checkpoint, the batch
size and run length), then claims its folder (a lock file: a second run into it is refused),
copies its console to ``<run>/pretrain.log``, and trains. SIGINT/SIGTERM stop it at the end of
a batch with ``last.ckpt`` saved and the resume command printed (exit 130/143); a refused input
exits 1 with one named line (see :mod:`.run.console`).
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from cass_lightning.apps.cluster.requeue import (
    lightning_plugins,
    requeue_after_stop,
    requeued_after_finish,
)
from cass_lightning.apps.run.common import (
    CONFIG_DIR,
    check_run_settings,
    instantiate_group,
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
from cass_lightning.apps.run.resume import (
    LAST_CHECKPOINT,
    RunStart,
    plan_start,
    resumable,
    set_aside_partial_export,
)
from cass_lightning.apps.run.resume_checks import restated_settings
from cass_lightning.apps.run.speed import check_speed, launch_settings, speed_settings, uses_cuda
from cass_lightning.callbacks import (
    DataWait,
    ExportBackbones,
    ImagesPerSecond,
    LastCheckpoint,
    LoopTimer,
    atomic_checkpoint_plugin,
)
from cass_lightning.callbacks.best import choose_best
from cass_lightning.callbacks.progress import progress_bar
from cass_lightning.export import weights_init
from cass_lightning.machine import trainer_machine
from cass_lightning.records import read_record
from cass_lightning.runtime import (
    apply_speed_settings,
    strategy_for_idle_parameters,
)

SUMMARY_FILE = "summary.json"
LOG_FILE = "pretrain.log"
#: What a run writes that a second run into the same folder must never overwrite.
KEPT = ("checkpoints", "export")


def data_views(model: Any, asked: Any = None) -> str:
    """The views the training data gives: the model's declaration
    (``PretrainingModule.data_views``: ``paper``, ``pair`` or ``dino``). ``data.train_views`` set
    by hand must agree; a conflicting value is refused by name, before training."""
    needs = model.data_views()
    if asked is not None and str(asked) != needs:
        name = getattr(model, "method_name", "") or type(model).__name__
        raise ValueError(
            f"{name} needs data.train_views={needs}, but data.train_views={asked} is set; leave "
            "data.train_views unset: the model decides the views it trains on"
        )
    return needs


def data_inputs(model: Any, data_cfg: Any) -> dict[str, Any]:
    """The image size and normalisation the training data gives: the model's declaration
    (``PretrainingModule.data_inputs``). A ``data.*`` value set by hand to something else
    (e.g. ``data.img_size=224`` for a model built for 384) is refused by name, before training."""
    needs = model.data_inputs()
    for key, value in needs.items():
        asked = data_cfg.get(key)
        if asked is None:
            continue
        asked = list(asked) if key in ("mean", "std") else asked
        same = (
            [float(a) for a in asked] == [float(v) for v in value]
            if isinstance(value, list)
            else asked == value
        )
        if not same:
            name = getattr(model, "method_name", "") or type(model).__name__
            raise ValueError(
                f"data.{key}={asked} but the {name} model is built for {key}={value}; set "
                f"model.{key} instead (the data follows the model)"
            )
    return needs


def resume_command(folder: Path) -> str:
    """The exact command that continues the run in ``folder``, restating the folders outside
    it that the run writes into (a resume takes those only from its command line)."""
    restated = [shlex.quote(o) for o in restated_settings(folder)]
    return " ".join([f"cass-pretrain resume={shlex.quote(str(folder))}", *restated])


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Build data, model, callbacks, loggers and trainer from ``cfg`` and fit.

    Returns the final metrics and where the run, checkpoints and export were written. Raises
    :class:`~.run.console.RunStopped` when SIGINT/SIGTERM stopped it (``last.ckpt`` saved).
    """
    folder = run_dir(cfg)
    if cfg.get("resume") is None and requeued_after_finish(folder):
        print(f"Requeued SLURM job: {folder} had already finished; nothing to do.")
        return read_record(folder / SUMMARY_FILE, "summary")  # read back: checked
    run = plan_start(cfg, folder)  # resume=<run folder>: checked; its last.ckpt is run.ckpt_path
    hint = f"; to continue the run in that folder: {resume_command(folder)}"
    if not run.resuming:
        refuse_to_overwrite(folder, KEPT, hint)
    check_run_settings(cfg)  # all of the above only read: a refusal leaves no trace
    check_speed(cfg)
    with hold_run_folder(folder, LOG_FILE, KEPT, hint, fresh=not run.resuming) as stop:
        try:
            return _pretrain(cfg, folder, run, stop)
        except RunStopped as stopped:
            message = stopped.message
            if (folder / LAST_CHECKPOINT).is_file():
                message += f" Continue from its last.ckpt with:\n  {resume_command(folder)}"
            # a scheduler's warning signal: the job goes back in the queue and continues here
            raise RunStopped(stopped.signum, requeue_after_stop(stop, message)) from None


def _stopped_message(stop: StopSignals, trainer: L.Trainer, callbacks: list[Any]) -> str:
    last = next((c for c in callbacks if isinstance(c, LastCheckpoint)), None)
    where = f"at global step {trainer.global_step} (epoch {trainer.current_epoch})"
    if last is not None and last.saved_on_stop:
        saved = f"saved {last.last_model_path}"
    elif last is not None:
        saved = "the weights were not finite, so last.ckpt keeps the last good state"
    else:
        saved = "no last_checkpoint callback is configured, so nothing was saved now"
    return f"Stopped by {stop.name} {where}; {saved}."


@dataclass
class Built:
    """What a pretraining start built from its config, before it fits."""

    model: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer
    callbacks: list[Any]
    best_reason: str | None
    timer: LoopTimer
    waits: DataWait
    speed: dict[str, bool]
    machine: dict[str, Any]


@dataclass
class Fitted:
    """What a start's fit left: its seconds, the run's costs over every start, the export."""

    elapsed: float
    costs: dict[str, Any]
    exporter: ExportBackbones | None


def _pretrain(cfg: DictConfig, folder: Path, run: RunStart, stop: StopSignals) -> dict[str, Any]:
    """The run inside its claimed folder: build -> fit -> write (checked by :func:`pretrain`)."""
    if cfg.get("print_config", False):
        print_config_tree(cfg)
    seed_everything(cfg.get("seed"))
    built = build(cfg, folder, run)
    stop.trainer = built.trainer
    fitted = fit(built, run, stop)
    result = summary(cfg, built, fitted, folder)
    write_summary(folder, result, fitted)
    return result


def build(cfg: DictConfig, folder: Path, run: RunStart) -> Built:
    """Model, then the data it declares (views, size, normalisation), callbacks, loggers and
    trainer; the start is recorded and the config saved once every check passed."""
    launch = launch_settings(cfg)
    on_cuda = uses_cuda(cfg.trainer.get("accelerator"))
    speed = speed_settings(cfg, launch["precision"], on_cuda)
    model: L.LightningModule = instantiate(
        cfg.model, batch_lr_factor=launch["batch_lr_factor"], _convert_="all"
    )
    apply_speed_settings(speed, model, on_cuda)
    # The data is composed once from what the model declares: its views, image size and
    # normalisation, and (from the model's idle parameters) the DDP strategy.
    datamodule: L.LightningDataModule = instantiate(
        cfg.data, train_views=data_views(model, cfg.data.get("train_views")),
        **data_inputs(model, cfg.data),
        pin_memory=speed["pin_memory"], persistent_workers=speed["persistent_workers"],
        _convert_="all",
    )  # fmt: skip
    launch["strategy"] = strategy_for_idle_parameters(
        launch["strategy"], model.has_idle_parameters()
    )
    callbacks = instantiate_group(cfg.get("callbacks"))
    callbacks, best_reason = choose_best(callbacks, model, datamodule)  # the method's monitor
    timer, waits = LoopTimer(), DataWait()
    callbacks += [timer, waits]
    if cfg.trainer.get("enable_progress_bar", True):  # the loss read back at the logging steps
        callbacks.append(progress_bar(rich=bool(cfg.get("rich_progress_bar", False))))
    run.record(speed)  # run_info.json; a resumed run's old metrics.csv becomes metrics.part<N>.csv
    if run.resuming and (moved := set_aside_partial_export(folder)) is not None:
        print(f"An export cut short by the stop is kept as {moved.name}; exporting again.")
    save_run_config(folder, cfg)  # .hydra/*.yaml, written now that the folder is this run's
    logger_cfg = run.logger_cfg(cfg.get("logger"))  # wandb keeps the run's id when resuming
    loggers = build_loggers(logger_cfg, **logger_context(cfg))  # CSV + offline-safe wandb
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=launch["precision"],
        strategy=launch["strategy"],
        sync_batchnorm=launch["sync_batchnorm"],
        benchmark=speed["cudnn_benchmark"] if on_cuda else None,
        callbacks=callbacks,
        logger=loggers or False,
        # a kill during a save leaves the old file whole; on SLURM, Lightning's requeue is off
        plugins=[atomic_checkpoint_plugin(), *lightning_plugins()],
        _convert_="all",
    )
    machine = trainer_machine(trainer)  # precision, device, processes, versions in use
    run.note_machine(machine)
    for logger in trainer.loggers:
        logger.log_hyperparams(
            {"seed": cfg.get("seed"), "data": dict(datamodule.hparams), "launch": launch,
             "speed": speed, "machine": machine}
        )  # fmt: skip
    return Built(model, datamodule, trainer, callbacks, best_reason, timer, waits, speed, machine)


def fit(built: Built, run: RunStart, stop: StopSignals) -> Fitted:
    """Fit (from ``last.ckpt`` when resuming) and finish an export a stop cut short; this
    start's cost goes into ``run_info.json`` however it ends."""
    trainer, model, callbacks, waits = built.trainer, built.model, built.callbacks, built.waits
    start = time.perf_counter()

    def finish(outcome: str) -> dict[str, Any]:  # this start's cost into run_info.json
        seconds = time.perf_counter() - start
        return run.finish(outcome, seconds, waits.loop_seconds, waits.steps, waits.images)

    try:
        trainer.fit(model, datamodule=built.datamodule, ckpt_path=run.ckpt_path)
        stop.fitted()  # a scheduler's warning signal from now on is ignored
    except SIGTERMException:  # SIGTERM, or SIGINT routed to it by StopSignals
        with contextlib.suppress(OSError):  # a full disk must not hide the stop
            finish("stopped")
        raise RunStopped(stop.received or signal.SIGTERM,
                         _stopped_message(stop, trainer, callbacks)) from None  # fmt: skip
    except BaseException:
        with contextlib.suppress(OSError):  # nor the error that ended the fit
            finish("failed")
        raise
    exporter = next((c for c in callbacks if isinstance(c, ExportBackbones)), None)
    if run.finish_export and exporter is not None and exporter.exported_to is None:
        # Stopped after its last step, before its export (or its summary): Lightning restored
        # last.ckpt and, with nothing left to train, skipped on_train_end; finished here.
        if (exporter.dirpath / "meta.json").is_file():  # whole: only the summary was missing
            exporter.exported_to = exporter.dirpath
        else:
            print("Training had finished before the stop; exporting its final state.")
            exporter.on_train_end(trainer, model)
    elapsed = time.perf_counter() - start
    return Fitted(elapsed, finish("finished"), exporter)


def summary(cfg: DictConfig, built: Built, fitted: Fitted, folder: Path) -> dict[str, Any]:
    """What ``summary.json`` holds: the method, costs, machine, metrics and where the
    checkpoints and export are."""
    trainer, model, callbacks, machine = built.trainer, built.model, built.callbacks, built.machine
    exporter = fitted.exporter
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]  # best, and last
    throughput = next((c for c in callbacks if isinstance(c, ImagesPerSecond)), None)
    return {
        "method": model.method,  # the registry name, as in the checkpoint and the export
        "method_label": model.method_name,  # for display only
        "run_dir": str(folder),
        # wall time, steps, images and images/s: totals over every start of the run
        # (``attempts``); ``cost_comparable`` is false when a start recorded no end
        **fitted.costs,
        "this_start_fit_seconds": fitted.elapsed,
        "loop_seconds": built.timer.seconds,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "batch_size": int(cfg.data.batch_size),
        "data_wait_share": built.waits.share,
        "speed": built.speed,
        "precision": machine["precision"],
        "machine": machine,  # the figures above and below were measured there
        "this_start_images_per_s": throughput.mean_images_per_s() if throughput else None,
        "peak_memory_gib": throughput.peak_memory_gib if throughput else None,
        "memory_kind": throughput.memory_kind if throughput else None,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "last_checkpoint": next((c.last_model_path for c in checkpoints if c.last_model_path),
                                None),
        "best_checkpoint": next((c.best_model_path for c in checkpoints if c.best_model_path),
                                None),
        "best_reason": built.best_reason,
        "export_dir": str(exporter.exported_to) if exporter and exporter.exported_to else None,
        "weights_init": weights_init(model.exportable()[0]) if hasattr(model, "exportable")
                        else None,
    }  # fmt: skip


def write_summary(folder: Path, result: dict[str, Any], fitted: Fitted) -> None:
    """``summary.json``, and where everything is, at the terminal."""
    costs = fitted.costs
    report_run(
        f"{result['method_label']} pretraining finished in {fitted.elapsed:.0f} s"
        + (f" ({len(costs['attempts'])} starts, {costs['fit_seconds']:.0f} s in all)"
           if len(costs["attempts"]) > 1 else ""),
        {"run folder": result["run_dir"], "last checkpoint": result["last_checkpoint"],
         "best checkpoint": result["best_checkpoint"] or f"none: {result['best_reason']}",
         "exported arms": result["export_dir"]},
        result["metrics"],
        shown=SHOWN_METRICS,
        summary_file=folder / SUMMARY_FILE,
        summary=result,
    )  # fmt: skip


#: What the end-of-run summary prints (all metrics are in csv/metrics.csv and summary.json).
SHOWN_METRICS = (
    "train/loss_epoch", "train/cosine_epoch", "train/cnn_std_epoch", "train/vit_std_epoch",
    "val/loss", "probe/cnn_val_acc", "probe/vit_val_acc", "knn/cnn_val_acc", "knn/vit_val_acc",
    "perf/images_per_s",
)  # fmt: skip


@resumable  # resume=<run folder> -> that folder and its saved overrides (see run/resume.py)
@entry_point  # a command line Hydra cannot compose exits 2
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pretrain")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final training loss (for Hydra sweepers). Exit codes:
    0 done, 1 refused input (named), 2 usage error, 130/143 stopped by SIGINT/SIGTERM."""
    with reported_errors():
        result = pretrain(cfg)
    return result["metrics"].get("train/loss_epoch")


if __name__ == "__main__":
    main()
