"""``cass-pretrain resume=<run folder>``: continue a stopped run in its own folder.

Hydra picks the run folder (``hydra.run.dir``) and composes the config before the task runs,
so resuming starts on the command line, in :func:`resume_argv` (applied by :func:`resumable`
around the ``@hydra.main`` function). ``resume=<run>`` becomes

    <the run's saved .hydra/overrides.yaml> <your other overrides> resume=<run> hydra.run.dir=<run>

so the same config is composed again into the same folder. Overrides given with ``resume=`` win
over the saved ones with the same key (``resume=<run> trainer.max_epochs=20`` trains further).
Hydra then rewrites ``.hydra/*.yaml``; the previous ones are first copied to ``.hydra/part<N>/``.

The task then calls :func:`plan_start`: it checks the folder (it must hold
``checkpoints/last.ckpt`` and no export yet), which gives ``trainer.fit`` its ``ckpt_path``;
Lightning restores weights, optimizer, scheduler, epoch and global step, so the finished run has
as many optimizer steps as one that was never stopped. :meth:`RunStart.record` keeps what the
earlier starts wrote: ``csv/metrics.csv`` (which Lightning's CSVLogger would delete) becomes
``csv/metrics.part<N>.csv``, and ``run_info.json`` lists every start. The run id in
``run_info.json`` is given to any ``WandbLogger`` so the resumed run continues the same wandb run.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cass_lightning.apps.overrides import (
    override_key,
    override_value,
    quote,
    split_flags,
    unquote,
)
from cass_lightning.io import atomic_write_json, is_temp_file

RUN_INFO = "run_info.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
#: Saved overrides that describe where the previous start ran, not what it trained.
_PLACEMENT_KEYS = {"resume", "hydra.run.dir", "hydra.output_subdir", "hydra.job.name"}

T = TypeVar("T")


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed; the message says why and what to do instead."""


# ----------------------------------------------------------------------------- checks
def check_resumable(folder: Path) -> Path:
    """The run's ``last.ckpt``, or a :class:`ResumeError` naming the folder and the problem."""
    if not folder.is_dir():
        raise ResumeError(f"resume={folder}: no such run folder")
    export = folder / "export"
    if export.is_dir() and any(export.iterdir()):
        if (export / "meta.json").is_file():
            raise ResumeError(
                f"resume={folder}: this run has already finished; its export is in {export}. "
                "Nothing was changed. To train further, start a new run (e.g. from its "
                "weights), or export another checkpoint with cass-export."
            )
        raise ResumeError(
            f"resume={folder}: {export} holds a partial export (no meta.json): the run stopped "
            f"while exporting, after training. Nothing was changed. Export its final state with "
            f"`cass-export {folder / LAST_CHECKPOINT} --out <new folder>`."
        )
    ckpt = folder / LAST_CHECKPOINT
    if not ckpt.is_file():
        raise ResumeError(
            f"resume={folder}: there is no {LAST_CHECKPOINT} in that folder, so there is nothing "
            "to resume from (the run stopped before its first checkpoint, or this is not a "
            "cass-pretrain run folder). Start a new run instead."
        )
    return ckpt


def _process_running(pid: int) -> bool:
    """Whether ``pid`` is a live cass process on this machine (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():  # no procfs (macOS): trust the pid
        return True
    try:
        return "cass" in cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return False


def _refuse_if_running(folder: Path) -> None:
    """Two processes writing one run folder would corrupt each other's checkpoints."""
    starts = read_run_info(folder).get("starts") or []
    if not starts:
        return
    last = starts[-1]
    pid = last.get("pid")
    same_host = last.get("host") == socket.gethostname()
    if same_host and isinstance(pid, int) and pid != os.getpid() and _process_running(pid):
        raise ResumeError(
            f"resume={folder}: the run is still running (process {pid} on this machine). "
            "Stop it first; nothing was changed."
        )


# ----------------------------------------------------------------------------- run_info.json
def read_run_info(folder: Path) -> dict[str, Any]:
    """``<run>/run_info.json`` (run id, every start), or ``{}`` for runs made without one."""
    path = folder / RUN_INFO
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _new_run_id() -> str:
    """Eight lowercase hex characters: a valid wandb run id."""
    return secrets.token_hex(4)


def _wandb_run_id(folder: Path) -> str | None:
    """The id of a wandb run logged into ``folder`` by a start without ``run_info.json``."""
    root = folder / "wandb"
    for path in sorted((root / "latest-run").glob("run-*.wandb")):
        return path.stem.removeprefix("run-")
    runs = sorted(p for p in root.glob("*run-*-*") if p.is_dir())
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


# ----------------------------------------------------------------------------- the task side
@dataclass
class RunStart:
    """How this start of a run begins: fresh, or from ``ckpt_path`` in the same folder."""

    folder: Path
    run_id: str
    ckpt_path: Path | None = None

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

    def record(self) -> None:
        """Keep the earlier starts' metrics and note this start in ``run_info.json`` (rank 0).

        Call before the loggers are built: Lightning's CSVLogger deletes an existing
        ``metrics.csv`` as soon as it writes anything (hyperparameters included).
        """
        if rank_zero_only.rank != 0:
            return
        if self.resuming:
            _keep_csv_metrics(self.folder)
        info = read_run_info(self.folder) if self.resuming else {}
        info.setdefault("run_id", self.run_id)
        info.setdefault("created", _now())
        info.setdefault("starts", []).append(
            {
                "started": _now(),
                "resumed_from": str(self.ckpt_path) if self.ckpt_path else None,
                "overrides": _task_overrides(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / RUN_INFO, info)
        if self.resuming:
            print(f"Resuming {self.folder} (run id {self.run_id}) from {self.ckpt_path}")


def _is_wandb(target: Any) -> bool:
    from hydra.utils import get_class
    from lightning.pytorch.loggers import WandbLogger

    try:
        return issubclass(get_class(str(target)), WandbLogger)
    except Exception:  # not a class: not a wandb logger (instantiation reports it)
        return False


def plan_start(cfg: DictConfig, folder: Path) -> RunStart:
    """A fresh start, or, with ``cfg.resume`` set, the checked resumption of ``folder``.

    Raises :class:`ResumeError` when ``resume`` names another folder than the one this run
    writes to (``cass-pretrain`` sets ``hydra.run.dir`` from it; direct callers must too), or when
    the folder cannot be resumed.
    """
    resume = cfg.get("resume")
    if resume is None:
        return RunStart(folder, _new_run_id())
    target = Path(str(resume)).expanduser().resolve()
    if target != folder.resolve():
        raise ResumeError(
            f"resume={resume} but this run writes to {folder}; resuming continues in the run's "
            "own folder (cass-pretrain sets hydra.run.dir from resume=)"
        )
    ckpt = check_resumable(folder)
    trainer = cfg.get("trainer") or {}
    if _training_complete(ckpt, trainer.get("max_epochs"), trainer.get("max_steps", -1)):
        raise ResumeError(
            f"resume={folder}: training had already finished (the last checkpoint is at the end "
            "of the configured epochs or steps) but there is no export: the run stopped while "
            f"exporting. Nothing was changed. Export it with `cass-export {ckpt} --out "
            f"{folder / 'export'}`, or give a larger trainer.max_epochs to train further."
        )
    run_id = read_run_info(folder).get("run_id") or _wandb_run_id(folder) or _new_run_id()
    return RunStart(folder, str(run_id), ckpt)


def _training_complete(ckpt: Path, max_epochs: int | None, max_steps: int | None) -> bool:
    """Whether ``trainer.fit`` from ``ckpt`` would stop at once (Lightning's ``FitLoop.done``).

    Lightning then skips ``on_train_end``, so nothing would be exported. The checkpoint is
    memory-mapped: only the small loop state is read, not the weights.
    """
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)
        steps = int(state["global_step"])
        epochs = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except Exception:  # unreadable here: let Lightning restore it and report
        return False
    max_steps = -1 if max_steps is None else int(max_steps)
    if max_epochs is None:  # Lightning's default
        max_epochs = 1000 if max_steps == -1 else -1
    return (max_steps != -1 and steps >= max_steps) or (max_epochs != -1 and epochs >= max_epochs)


def _keep_csv_metrics(folder: Path) -> None:
    """Rename every CSV logger's ``metrics.csv`` in the run to ``metrics.part<N>.csv``."""
    for metrics in sorted(folder.rglob("metrics.csv")):
        os.rename(metrics, _free_name(metrics.parent, "metrics.part{}.csv"))


def _free_name(folder: Path, pattern: str) -> Path:
    n = 1
    while (folder / pattern.format(n)).exists():
        n += 1
    return folder / pattern.format(n)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


# ----------------------------------------------------------------------------- the command line
def _keep_hydra_files(folder: Path) -> None:
    """Copy ``.hydra/*.yaml`` to ``.hydra/part<N>/``: Hydra rewrites them when the run resumes."""
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


def _warn_if_started_elsewhere(folder: Path) -> None:
    """Relative paths in the saved overrides (and defaults such as ``CASS_DATA_ROOT=data``) are
    taken from the current folder: say so when the run was started from another one."""
    try:
        started_in = OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # no or unreadable hydra.yaml: nothing to compare
        return
    if started_in and Path(started_in).resolve() != Path.cwd().resolve():
        print(
            f"Note: {folder} was started from {started_in}; relative paths in its overrides "
            f"are now taken from {Path.cwd()}.",
            file=sys.stderr,
        )


def resume_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``resume=<run>`` expanded into the run's saved overrides and folder.

    Unchanged when there is no ``resume=`` (or ``resume=null``). Checks the folder first and
    raises :class:`ResumeError` before anything is written. On rank 0 it also refuses a run
    that is still running, removes unfinished temporary writes and keeps ``.hydra/*.yaml``.
    """
    from hydra._internal.utils import get_args_parser

    args = list(argv[1:])
    tokens = [a for a in args if a.startswith("resume=")]
    if not tokens:
        return list(argv)
    value = unquote(tokens[-1].split("=", 1)[1])
    if value in ("", "null"):
        return list(argv)
    parsed = get_args_parser().parse_args(args)
    if parsed.multirun:
        raise ResumeError("resume= continues one run; it cannot be combined with -m/--multirun")
    folder = (Path.cwd() / Path(value).expanduser()).resolve()
    check_resumable(folder)
    saved_file = folder / SAVED_OVERRIDES
    if not saved_file.is_file():
        raise ResumeError(
            f"resume={folder}: there is no {SAVED_OVERRIDES} there, so the run's settings are "
            "unknown (is it a cass-pretrain run folder?)"
        )
    saved = [str(o) for o in OmegaConf.load(saved_file)]

    given = [o for o in parsed.overrides if not o.startswith("resume=")]
    extra = []
    for override in given:
        if override_key(override) == "hydra.run.dir":
            # e.g. added by Lightning when it relaunches this command for the other DDP ranks
            if Path(str(override_value(override))).expanduser().resolve() != folder:
                raise ResumeError(f"resume={folder} and {override} name different folders")
            continue
        extra.append(override)
    replaced = _PLACEMENT_KEYS | {key for o in extra if (key := override_key(o))}
    kept = [o for o in saved if override_key(o) not in replaced]

    placement = [f"resume={quote(folder)}", f"hydra.run.dir={quote(folder)}"]
    for override in placement:
        if Path(str(override_value(override))) != folder:
            raise ResumeError(f"resume={folder}: this folder name cannot be passed to Hydra")
    # --cfg, --info, --help: Hydra only prints, the run folder is not touched.
    prints_only = parsed.cfg or parsed.info or parsed.help or parsed.hydra_help
    if rank_zero_only.rank == 0 and not prints_only and not parsed.shell_completion:
        _refuse_if_running(folder)
        _warn_if_started_elsewhere(folder)
        _remove_unfinished_writes(folder)
        _keep_hydra_files(folder)
    return [argv[0], *kept, *extra, *placement, *split_flags(args, parsed.overrides)]


def resumable(hydra_main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a ``@hydra.main`` function so ``resume=<run>`` works on its command line.

    Only the entry-point call (no arguments: Hydra reads ``sys.argv``) is rewritten; a call
    with a config passes straight through, as with ``@hydra.main`` itself.
    """

    @functools.wraps(hydra_main)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if not args and not kwargs:
            try:
                sys.argv = resume_argv(sys.argv)
            except ResumeError as err:
                sys.exit(f"Error: {err}")
        return hydra_main(*args, **kwargs)

    return wrapper
