"""A run's record of its starts: ``run_info.json`` (run id, every start) and, when a run is
resumed, keeping what the earlier starts wrote (``.hydra/*.yaml``, ``metrics.csv``) before this
start writes its own. The task side of ``resume=`` (:mod:`.resume`) builds on it."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cass_lightning.apps.cluster.job import current_job
from cass_lightning.io import atomic_write_json, first_free, is_temp_file, utc_timestamp
from cass_lightning.records import RUN_ID, read_record

RUN_INFO = "run_info.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def read_run_info(folder: Path) -> dict[str, Any]:
    """``<run>/run_info.json`` (run id, every start) as plain JSON, checked
    (:func:`~cass_lightning.records.check_run_info`: a run id that is a plain name, finite
    costs), or ``{}`` for runs made without one. A file that is there but not a valid record is
    refused by name (:class:`~cass_lightning.io.RecordError`): its run id would go to wandb."""
    path = folder / RUN_INFO
    if not path.is_file():
        return {}
    return read_record(path, "run_info")


def new_run_id() -> str:
    """Eight lowercase hex characters: a valid wandb run id."""
    return secrets.token_hex(4)


def wandb_run_id(folder: Path) -> str | None:
    """The id of a wandb run logged into ``folder`` by a start without ``run_info.json``."""
    root = folder / "wandb"
    found = [path.stem.removeprefix("run-")
             for path in sorted((root / "latest-run").glob("run-*.wandb"))][:1]  # fmt: skip
    if not found:
        runs = sorted(p for p in root.glob("*run-*-*") if p.is_dir())
        found = [runs[-1].name.rsplit("-", 1)[-1]] if runs else []
    # a file name is data too: only a plain id is taken (never ``${...}`` into the logger)
    return found[0] if found and RUN_ID.fullmatch(found[0]) else None


# ----------------------------------------------------------------------------- the task side
@dataclass
class RunStart:
    """How this start of a run begins: fresh, or from ``ckpt_path`` in the same folder."""

    folder: Path
    run_id: str
    ckpt_path: Path | None = None
    #: started again by the scheduler (a requeued SLURM job): the folder's record is kept
    requeued: bool = False
    #: Training had ended before the stop but the export had not: this start only exports.
    finish_export: bool = False

    @property
    def resuming(self) -> bool:
        return self.ckpt_path is not None

    def logger_cfg(self, group: DictConfig | None) -> DictConfig | None:
        """The logger group with this run's id given to every ``WandbLogger``.

        A fresh run gets a new id (so it is known before wandb starts); a resumed run gets the
        saved one with ``resume="allow"``. Returned as a resolved copy: ``cfg`` is not changed.
        """
        if not group:
            return group
        plain = OmegaConf.to_container(group, resolve=True)
        assert isinstance(plain, dict)
        for entry in plain.values():
            if isinstance(entry, dict) and _is_wandb(entry.get("_target_")):
                if entry.get("id") is None and entry.get("version") is None:
                    entry["id"] = self.run_id
                if self.resuming and entry.get("resume") is None:
                    entry["resume"] = "allow"
        return OmegaConf.create(plain)

    def record(self, speed: dict[str, bool] | None = None) -> None:
        """Keep what earlier starts wrote and note this start in ``run_info.json`` (rank 0).

        Call once the run has claimed its folder, before its config is saved and its loggers
        are built: Lightning's CSVLogger deletes an existing ``metrics.csv`` as soon as it
        writes anything (hyperparameters included). A resumed run's ``.hydra/*.yaml`` go to
        ``.hydra/part<N>/``, its ``metrics.csv`` files to ``metrics.part<N>.csv``, and the hidden
        temporary files of saves a kill interrupted are removed. ``speed``: the speed settings in
        effect for this start (a resumed run may land on another machine).
        """
        if rank_zero_only.rank != 0:
            return
        if self.resuming:
            _remove_unfinished_writes(self.folder)
            _keep_hydra_files(self.folder)
            _keep_csv_metrics(self.folder)
        info = read_run_info(self.folder) if self.resuming or self.requeued else {}
        info.setdefault("run_id", self.run_id)
        # A collision-free identity (the 8-character run_id is also the wandb id, kept short):
        # drawn at the first start, kept on resume, so copies of the folder read as one run.
        info.setdefault("run_uuid", uuid.uuid4().hex)
        info.setdefault("created", utc_timestamp())
        info.setdefault("starts", []).append(
            {
                "started": utc_timestamp(),
                "resumed_from": str(self.ckpt_path) if self.ckpt_path else None,
                "overrides": _task_overrides(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                **({"slurm": job.record()} if (job := current_job()) is not None else {}),
                **({"speed": dict(speed)} if speed is not None else {}),
            }
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / RUN_INFO, info)
        if self.resuming:
            print(f"Resuming {self.folder} (run id {self.run_id}) from {self.ckpt_path}")

    def note_machine(self, machine: dict[str, Any]) -> None:
        """Add what this start runs on (:func:`cass_lightning.machine.machine_record`: precision,
        device, processes, versions) to its entry in ``run_info.json`` (rank 0), once the
        trainer that decides them is built: a resumed run may land on another machine."""
        info = read_run_info(self.folder)
        starts = info.get("starts") or []
        if rank_zero_only.rank == 0 and starts:
            starts[-1]["machine"] = machine
            atomic_write_json(self.folder / RUN_INFO, info)

    def finish(
        self, outcome: str, seconds: float, train_seconds: float, steps: int, images: int
    ) -> dict[str, Any]:
        """Complete this start's entry in ``run_info.json`` with what it cost (rank 0) and return
        the run's costs over every start (:func:`attempt_costs`).

        ``outcome``: ``finished``, ``stopped`` (a signal) or ``failed``; ``seconds`` the fit's
        wall time, ``train_seconds`` the training loop's, ``steps`` the optimiser steps and
        ``images`` the training images of this start. A start killed with SIGKILL never gets
        here, so its entry keeps no ``ended``: the run's total cost is then unknown.
        """
        info = read_run_info(self.folder)
        starts = info.get("starts") or []
        if rank_zero_only.rank == 0 and starts:
            starts[-1].update(
                ended=utc_timestamp(), outcome=outcome, seconds=float(seconds),
                train_seconds=float(train_seconds), steps=int(steps), images=int(images),
            )  # fmt: skip
            atomic_write_json(self.folder / RUN_INFO, info)
        return attempt_costs(starts)


#: What a start records when it ends; a start without them was killed (or predates them).
ATTEMPT_KEYS = ("started", "ended", "outcome", "seconds", "train_seconds", "steps", "images")


def attempt_costs(starts: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's cost over every start: ``attempts`` (each start's record), the totals
    ``fit_seconds``, ``train_seconds``, ``steps``, ``images`` and ``images_per_s``, and
    ``cost_comparable`` with, when false, ``cost_note`` saying why (a start that recorded no
    end: killed with SIGKILL, or made by a version that did not record costs)."""
    attempts = [{k: start.get(k) for k in ATTEMPT_KEYS} for start in starts]
    unknown = [i + 1 for i, a in enumerate(attempts) if a["ended"] is None or a["seconds"] is None]
    totals: dict[str, Any] = {
        key: sum(a[key] or 0 for a in attempts)
        for key in ("seconds", "train_seconds", "steps", "images")
    }
    speed = totals["images"] / totals["train_seconds"] if totals["train_seconds"] > 0 else None
    result: dict[str, Any] = {
        "attempts": attempts,
        "fit_seconds": float(totals["seconds"]),
        "train_seconds": float(totals["train_seconds"]),
        "steps": int(totals["steps"]),
        "images": int(totals["images"]),
        "images_per_s": speed,
        "cost_comparable": not unknown,
    }
    if unknown:
        result["cost_note"] = (
            f"start(s) {', '.join(map(str, unknown))} of {len(attempts)} recorded no end "
            "(killed with SIGKILL, or from an older version): the totals miss their time, steps "
            "and images"
        )
    return result


def _is_wandb(target: Any) -> bool:
    from hydra.utils import get_class
    from lightning.pytorch.loggers import WandbLogger

    try:
        return issubclass(get_class(str(target)), WandbLogger)
    except Exception:  # not a class: not a wandb logger (instantiation reports it)
        return False


def _keep_csv_metrics(folder: Path) -> None:
    """Rename every CSV logger's ``metrics.csv`` in the run to ``metrics.part<N>.csv``."""
    for metrics in sorted(folder.rglob("metrics.csv")):
        os.rename(metrics, _free_name(metrics.parent, "metrics.part{}.csv"))


def _free_name(folder: Path, pattern: str) -> Path:
    return first_free(lambda n: folder / pattern.format(n))


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _keep_hydra_files(folder: Path) -> None:
    """Copy ``.hydra/*.yaml`` to ``.hydra/part<N>/``: the resumed run writes its own."""
    hydra_dir = folder / ".hydra"
    files = sorted(hydra_dir.glob("*.yaml"))
    if not files:
        return
    keep = _free_name(hydra_dir, "part{}")
    keep.mkdir()
    for path in files:
        shutil.copy2(path, keep / path.name)


def _remove_unfinished_writes(folder: Path) -> None:
    """Delete the hidden temporary files of saves that a kill interrupted (never a checkpoint)."""
    checkpoints = folder / LAST_CHECKPOINT.parent
    for path in checkpoints.glob(".*"):
        if path.is_file() and is_temp_file(path):
            path.unlink()
