"""``cass-pretrain resume=<run folder>``: continue a stopped run in its own folder.

Hydra picks the run folder (``hydra.run.dir``) and composes the config before the task runs,
so resuming starts on the command line, in :func:`resume_argv` (applied by :func:`resumable`
around the ``@hydra.main`` function). ``resume=<run>`` becomes

    <the run's saved .hydra/overrides.yaml> <your other overrides> resume=<run> hydra.run.dir=<run>

so the same config is composed again into the same folder. Overrides given with ``resume=`` win
over the saved ones with the same key (``resume=<run> trainer.max_epochs=20`` trains further).

A run folder is data that becomes code when resumed: its saved overrides are applied as if
typed. So before anything else they are checked (:func:`~.overrides.refused_overrides`): only
what a user could type for this app's own keys and groups is applied; anything naming
``_target_``, calling a resolver, adding nodes, changing Hydra or naming groups the app lacks
is refused, listed, unless ``resume_trust=true`` is given (for a folder you trust). And
``last.ckpt`` is loaded (``weights_only``) before anything is written: a truncated, empty or
hostile checkpoint is refused with the folder left byte for byte as it was.

The task then calls :func:`plan_start`: it checks the folder again (it must hold a readable
``checkpoints/last.ckpt``, and not both a finished export and ``summary.json``), which gives
``trainer.fit`` its ``ckpt_path``; Lightning restores weights, optimizer, scheduler, epoch and
global step, so the finished run has as many optimizer steps as one that was never stopped. A
run stopped after its last step but before its export (or summary) trains nothing more: the
resumed start writes what is missing (``RunStart.finish_export``). Once the run has claimed
its folder, :meth:`RunStart.record` keeps what the earlier starts wrote: ``.hydra/*.yaml`` go to
``.hydra/part<N>/``, ``csv/metrics.csv`` (which Lightning's CSVLogger would delete) becomes
``csv/metrics.part<N>.csv``, and ``run_info.json`` lists every start. The run id in
``run_info.json`` is given to any ``WandbLogger`` so the resumed run continues the same wandb run.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.run.overrides import (
    override_key,
    override_value,
    quote,
    refused_overrides,
    split_flags,
    unquote,
)
from cass_lightning.apps.run.resume_checks import outside_writes, records_problem
from cass_lightning.apps.run.runfolder import LOCK_FILE, holder_alive, read_lock
from cass_lightning.apps.run.runinfo import (
    LAST_CHECKPOINT,
    RUN_INFO,
    RunStart,
    new_run_id,
    read_run_info,
    wandb_run_id,
)
from cass_lightning.io import (
    RecordError,
    UnreadableFileError,
    first_free,
    load_torch_file,
    read_yaml,
)

__all__ = [
    "LAST_CHECKPOINT", "RUN_INFO", "ResumeError", "RunStart", "check_resumable", "plan_start",
    "read_checkpoint", "read_run_info", "resumable", "resume_argv", "set_aside_partial_export",
]  # fmt: skip

SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
#: What cass-pretrain writes last: a run holding it (and its export) has finished.
SUMMARY_FILE = "summary.json"
#: Saved overrides that describe where the previous start ran, not what it trained.
_PLACEMENT_KEYS = {"resume", "hydra.run.dir", "hydra.output_subdir", "hydra.job.name"}
#: Given on the command line only: never taken from a folder's saved overrides.
TRUST_KEY = "resume_trust"
#: What a Lightning checkpoint must hold to be resumed from.
_CHECKPOINT_KEYS = ("state_dict", "global_step", "loops", "optimizer_states")

T = TypeVar("T")


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed; the message says why and what to do instead."""


# ----------------------------------------------------------------------------- checks
def check_resumable(folder: Path) -> Path:
    """The run's ``last.ckpt``, or a :class:`ResumeError` naming the folder and the problem."""
    if not folder.is_dir():
        raise ResumeError(f"resume={folder}: no such run folder")
    export = folder / "export"
    if (export / "meta.json").is_file() and (folder / SUMMARY_FILE).is_file():
        # a cut-short export (no meta.json) is redone, a missing summary written on resume
        raise ResumeError(
            f"resume={folder}: this run has already finished; its export is in {export}. "
            "Nothing was changed. To train further, start a new run (e.g. from its "
            "weights), or export another checkpoint with cass-export."
        )
    problem = records_problem(folder)  # run_info.json and .hydra/*.yaml, as plain data
    if problem:
        raise ResumeError(f"resume: {problem}. Nothing was changed.")
    ckpt = folder / LAST_CHECKPOINT
    if not ckpt.is_file():
        raise ResumeError(
            f"resume={folder}: there is no {LAST_CHECKPOINT} in that folder, so there is nothing "
            "to resume from (the run stopped before its first checkpoint, or this is not a "
            "cass-pretrain run folder). Start a new run instead."
        )
    read_checkpoint(ckpt)
    return ckpt


def read_checkpoint(ckpt: Path) -> dict[str, Any]:
    """``ckpt`` loaded with ``weights_only`` (memory-mapped), or a :class:`ResumeError` saying
    why it cannot be resumed from; nothing is written either way."""
    try:
        state = load_torch_file(ckpt, "checkpoint", mmap=True)
    except UnreadableFileError as err:
        raise ResumeError(f"resume: {err}. Nothing was changed.") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ResumeError(
            f"resume: {ckpt} is not a full training checkpoint (it lacks {', '.join(missing)}); "
            "nothing was changed. Start a new run (its weights can be exported with cass-export)."
        )
    return state


def _refuse_if_running(folder: Path) -> None:
    """Two processes writing one run folder would corrupt each other's checkpoints."""
    holder = read_lock(folder / LOCK_FILE)
    if holder is not None and holder.get("pid") != os.getpid() and holder_alive(holder):
        raise ResumeError(
            f"resume={folder}: the run is still running (process {holder.get('pid')} on "
            f"{holder.get('host')}). Stop it first; nothing was changed."
        )


def plan_start(cfg: DictConfig, folder: Path) -> RunStart:
    """A fresh start, or, with ``cfg.resume`` set, the checked resumption of ``folder``.

    Raises :class:`ResumeError` when ``resume`` names another folder than the one this run
    writes to (``cass-pretrain`` sets ``hydra.run.dir`` from it; direct callers must too), or when
    the folder cannot be resumed.
    """
    resume = cfg.get("resume")
    if resume is None:
        return _fresh_or_requeued(folder, cfg.get("trainer") or {})
    target = Path(str(resume)).expanduser().resolve()
    if target != folder.resolve():
        raise ResumeError(
            f"resume={resume} but this run writes to {folder}; resuming continues in the run's "
            "own folder (cass-pretrain sets hydra.run.dir from resume=)"
        )
    ckpt = check_resumable(folder)
    trainer = cfg.get("trainer") or {}
    complete = _training_complete(ckpt, trainer.get("max_epochs"), trainer.get("max_steps", -1))
    try:  # checked by check_resumable above; read again as the run starts from it
        run_id = read_run_info(folder).get("run_id") or wandb_run_id(folder) or new_run_id()
    except RecordError as err:
        raise ResumeError(f"resume: {err}. Nothing was changed.") from None
    return RunStart(folder, str(run_id), ckpt, finish_export=complete)


def set_aside_partial_export(folder: Path) -> Path | None:
    """Move an export a stop cut short (files, no ``meta.json``) to ``export.partial-<n>``, so
    the resumed run writes a whole one (nothing is deleted); the new place, or ``None``."""
    export = folder / "export"
    if not export.is_dir() or (export / "meta.json").is_file() or not any(export.iterdir()):
        return None
    target = first_free(lambda n: folder / f"export.partial-{n}")
    os.rename(export, target)
    return target


def _fresh_or_requeued(folder: Path, trainer: Any) -> RunStart:
    """A fresh start; or, when an earlier start of this same SLURM job wrote ``folder`` (the
    scheduler requeued it: preemption, ``scontrol requeue``, a time limit), its continuation
    from ``last.ckpt`` (or from the start, when it stopped before its first checkpoint; only
    the export, when it stopped after its last step)."""
    from cass_lightning.apps.cluster.requeue import earlier_start_in

    info = read_run_info(folder)
    if not earlier_start_in(info):
        return RunStart(folder, new_run_id())
    run_id = str(info.get("run_id") or new_run_id())
    ckpt = folder / LAST_CHECKPOINT
    if not ckpt.is_file():
        print(f"Requeued SLURM job: {folder} has no {LAST_CHECKPOINT} yet; starting it again")
        return RunStart(folder, run_id, requeued=True)
    check_resumable(folder)
    print(f"Requeued SLURM job: continuing {folder} from {LAST_CHECKPOINT}")
    complete = _training_complete(ckpt, trainer.get("max_epochs"), trainer.get("max_steps", -1))
    return RunStart(folder, run_id, ckpt, requeued=True, finish_export=complete)


def _training_complete(ckpt: Path, max_epochs: int | None, max_steps: int | None) -> bool:
    """Whether ``trainer.fit`` from ``ckpt`` would stop at once (Lightning's ``FitLoop.done``).

    Lightning then skips ``on_train_end``, so the resumed start exports itself (a run stopped
    between its last step and its export: ``RunStart.finish_export``). The checkpoint is
    memory-mapped: only the small loop state is read, not the weights.
    """
    try:
        state = read_checkpoint(ckpt)
        steps = int(state["global_step"])
        epochs = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (ResumeError, KeyError, TypeError, ValueError):  # Lightning reports it on restore
        return False
    max_steps = -1 if max_steps is None else int(max_steps)
    if max_epochs is None:  # Lightning's default
        max_epochs = 1000 if max_steps == -1 else -1
    return (max_steps != -1 and steps >= max_steps) or (max_epochs != -1 and epochs >= max_epochs)


# ----------------------------------------------------------------------------- the command line
def _warn_if_started_elsewhere(folder: Path) -> None:
    """Relative paths in the saved overrides (and defaults such as ``CASS_DATA_ROOT=data``) are
    taken from the current folder: say so when the run was started from another one."""
    try:  # plain YAML: an ${...} in it is text, never resolved
        saved = read_yaml(folder / ".hydra" / "hydra.yaml", "saved hydra.yaml")
        started_in = saved["hydra"]["runtime"]["cwd"]
    except (OSError, RecordError, KeyError, TypeError):  # no or unreadable hydra.yaml
        return
    if not isinstance(started_in, str) or "${" in started_in or len(started_in) > 4096:
        return  # not a folder name: nothing to compare or print
    if started_in and Path(started_in).resolve() != Path.cwd().resolve():
        print(
            f"Note: {folder} was started from {started_in}; relative paths in its overrides "
            f"are now taken from {Path.cwd()}.",
            file=sys.stderr,
        )


def resume_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``resume=<run>`` expanded into the run's saved overrides and folder.

    Unchanged when there is no ``resume=`` (or ``resume=null``). Writes nothing: it checks the
    folder and its ``last.ckpt``, refuses saved overrides a user could not have typed (unless
    ``resume_trust=true`` is given) and, on rank 0, a run that is still running, raising
    :class:`ResumeError`.
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
    saved = _saved_overrides(folder)

    given = [o for o in parsed.overrides if not o.startswith("resume=")]
    extra = []
    for override in given:
        if override_key(override) == "hydra.run.dir":
            # e.g. added by Lightning when it relaunches this command for the other DDP ranks
            if Path(str(override_value(override))).expanduser().resolve() != folder:
                raise ResumeError(f"resume={folder} and {override} name different folders")
            continue
        extra.append(override)
    replaced = _PLACEMENT_KEYS | {TRUST_KEY} | {key for o in extra if (key := override_key(o))}
    kept = [o for o in saved if override_key(o) not in replaced]
    problem = outside_writes(folder, kept, extra, _compose_pretrain)  # and overlong values
    if problem:
        raise ResumeError(problem)
    if not any(override_key(o) == TRUST_KEY and _is_true(override_value(o)) for o in extra):
        _refuse_untrusted(folder, kept)
        _refuse_unknown_keys(folder, kept)
    changed = [o for o in extra if override_key(o) not in (TRUST_KEY, None)]
    if changed and not (parsed.help or parsed.hydra_help or parsed.shell_completion):
        _refuse_shape_change(folder, [*kept, *extra], changed)

    placement = [f"resume={quote(folder)}", f"hydra.run.dir={quote(folder)}"]
    for override in placement:
        if Path(str(override_value(override))) != folder:
            raise ResumeError(f"resume={folder}: this folder name cannot be passed to Hydra")
    # --cfg, --info, --help: Hydra only prints, the run folder is not touched.
    prints_only = parsed.cfg or parsed.info or parsed.help or parsed.hydra_help
    if rank_zero_only.rank == 0 and not prints_only and not parsed.shell_completion:
        _refuse_if_running(folder)
        _warn_if_started_elsewhere(folder)
    return [argv[0], *kept, *extra, *placement, *split_flags(args, parsed.overrides)]


def _is_true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _saved_overrides(folder: Path) -> list[str]:
    """The run's ``.hydra/overrides.yaml``: a list of strings, or a named :class:`ResumeError`."""
    saved_file = folder / SAVED_OVERRIDES
    if not saved_file.is_file():
        raise ResumeError(
            f"resume={folder}: there is no {SAVED_OVERRIDES} there, so the run's settings are "
            "unknown (is it a cass-pretrain run folder?)"
        )
    try:
        saved = read_yaml(saved_file, "list of overrides")  # plain YAML, nothing resolved
    except RecordError as err:  # the file is damaged
        raise ResumeError(f"resume: {err}; nothing was changed") from None
    if not isinstance(saved, list) or not all(isinstance(o, str) for o in saved):
        raise ResumeError(f"resume: {saved_file} is not a list of overrides; nothing was changed")
    return saved


def _refuse_untrusted(folder: Path, overrides: list[str]) -> None:
    """Refuse saved overrides that only a hand-edited (or hostile) folder would hold."""
    refused = refused_overrides(overrides, CONFIG_DIR, _PLACEMENT_KEYS)
    if refused:
        listed = "; ".join(f"{o!r} {why}" for o, why in refused)
        raise ResumeError(
            f"resume={folder}: its saved {SAVED_OVERRIDES} holds overrides that a user could "
            f"not type for cass-pretrain's own settings: {listed}. Applying them could run code "
            "from that folder; nothing was changed. A run folder from elsewhere is code: if you "
            "trust where it came from, resume with resume_trust=true."
        )


#: The model settings a checkpoint's weights have the shape of (``hyper_parameters`` keys).
SHAPE_KEYS = (
    "cnn", "vit", "img_size", "in_chans", "head", "head_dim", "projector_hidden_dim", "arm",
    "global_crops", "remedies.predictor", "remedies.predictor_hidden_dim",
)  # fmt: skip
#: Keys of a dict-valued ``head`` (DINO's) that are schedules, not shapes.
_NOT_SHAPE = {"freeze_last_layer_epochs"}


def _shape_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _NOT_SHAPE}
    return value


def _compose_pretrain(overrides: list[str]) -> DictConfig:
    """cass-pretrain's config composed with ``overrides`` (nothing resolved or instantiated);
    Hydra's exception when they do not compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="pretrain", overrides=overrides)
    finally:
        restore_gh_from_backup(backup)


def _refuse_unknown_keys(folder: Path, overrides: list[str]) -> None:
    """Refuse saved overrides that do not compose (a key or group option cass-pretrain does not
    have): named, exit 1, rather than Hydra's usage error about a command line the user did not
    type."""
    try:
        _compose_pretrain(overrides)
    except Exception as err:  # Hydra's message names the key
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ResumeError(
            f"resume={folder}: its saved {SAVED_OVERRIDES} does not compose into cass-pretrain's "
            f"settings ({first}); nothing was changed. If you trust that folder, resume with "
            "resume_trust=true."
        ) from None


def _plain_select(record: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)  # type: ignore[assignment]
    return record


def _refuse_shape_change(folder: Path, overrides: list[str], changed: list[str]) -> None:
    """Refuse, before Hydra saves anything, overrides given with ``resume=`` that change the
    shape of the model in ``last.ckpt`` (another encoder, size, head...): the restore would fail
    with a size-mismatch traceback, and the saved override would make every later resume fail.

    The resumed config is composed (nothing is evaluated: the saved overrides were vetted) and
    its model settings compared with the checkpoint's recorded ``hyper_parameters``."""
    hparams = read_checkpoint(folder / LAST_CHECKPOINT).get("hyper_parameters")
    if not isinstance(hparams, dict):
        return
    try:
        cfg = _compose_pretrain(overrides)
    except Exception:  # Hydra reports an override it cannot compose itself, when it runs
        return
    diffs = []
    for key in SHAPE_KEYS:
        saved = _plain_select(hparams, key)  # read as data: never resolved
        try:
            now = OmegaConf.select(cfg.model, key, default=None)
        except Exception:  # an interpolation only the running app can resolve: not a shape
            continue
        if OmegaConf.is_config(now):
            now = OmegaConf.to_container(now, resolve=True)
        if saved is not None and now is not None and _shape_value(now) != _shape_value(saved):
            diffs.append(f"model.{key}={now} (the checkpoint has {saved})")
    if diffs:
        raise ResumeError(
            f"resume={folder} {' '.join(changed)}: this changes the model's shape: "
            f"{'; '.join(diffs)}. The weights in {LAST_CHECKPOINT} cannot be loaded into that "
            "model; nothing was changed. Resume with the run's own model settings, or start a "
            "new run (e.g. from this run's exported weights)."
        )


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
