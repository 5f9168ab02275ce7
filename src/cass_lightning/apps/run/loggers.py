"""Loggers for ``cass-pretrain``: a CSV log always, and Weights & Biases that never blocks a run.

``build_loggers`` instantiates the ``logger`` config group. For wandb it decides *before*
``wandb.init`` whether the run can be online: ``WANDB_MODE``, when set, always wins; otherwise a
run without an API key, or whose wandb server does not accept a TCP connection within a few
seconds, logs offline into ``<run>/wandb`` (upload later with ``wandb sync``). A short
``init_timeout`` and a fall-back to offline when an online ``wandb.init`` still fails are the
second guard. In a Hydra multirun every job is its own wandb run, named by its overrides, grouped
by the sweep folder and finished when its training ends, so the next job starts a new run.
"""

from __future__ import annotations

import configparser
import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cass_lightning.apps.run.common import run_dir as _run_dir
from cass_lightning.io import host_reachable

#: wandb's public cloud server, used when neither WANDB_BASE_URL nor wandb's settings name one.
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
#: Seconds the reachability probe waits for a TCP connection to the wandb server.
PROBE_TIMEOUT_S = 2.5
#: Seconds ``wandb.init`` may take online before failing (wandb's default is 90).
DEFAULT_INIT_TIMEOUT_S = 30.0
#: Seconds ``run.finish()`` waits for the last uploads; what is left stays on disk for sync.
DEFAULT_FINISH_TIMEOUT_S = 120.0


def _say(line: str) -> None:
    """One line for the user, from rank 0 only (other ranks never create a wandb run)."""
    if rank_zero_only.rank == 0:
        print(line, flush=True)


# --------------------------------------------------------------------------- mode decision
def wandb_host() -> str:
    """The wandb server URL: ``WANDB_BASE_URL``, else wandb's settings file, else the cloud."""
    if url := os.environ.get("WANDB_BASE_URL"):
        return url.rstrip("/")
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
    except configparser.Error:
        return DEFAULT_WANDB_HOST
    return parser.get("default", "base_url", fallback=DEFAULT_WANDB_HOST).rstrip("/")


def has_wandb_credentials(host: str) -> bool:
    """True when wandb would find credentials for ``host`` without prompting.

    ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE``, else a ``.netrc`` entry for the host, read
    with wandb's own reader where this wandb version has one (0.2x+: ``wbauth``).
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:
        return _netrc_has_entry(host)
    try:
        return bool(read_netrc_auth(host=host))
    except Exception:  # a malformed key or URL: wandb could not log in with it either
        return False


def _netrc_has_entry(host: str) -> bool:
    """A stdlib fallback for wandb versions without ``wbauth``: ``$NETRC`` or ``~/.netrc``."""
    path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(urlsplit(host).netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def choose_wandb_mode(
    *,
    offline: bool = False,
    host: str | None = None,
    has_credentials: Callable[[str], bool] | None = None,
    probe: Callable[[str, float], bool] | None = None,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> tuple[str, str]:
    """``(mode, reason)`` for ``wandb.init``: ``online``, ``offline`` or ``WANDB_MODE``'s value.

    Order: ``WANDB_MODE`` if set; ``offline=True`` from the config; no credentials; an
    unreachable server; else online. ``reason`` says which rule decided, for the printed line.
    ``has_credentials`` and ``probe`` default to ``has_wandb_credentials`` and ``host_reachable``.
    """
    has_credentials = has_credentials or has_wandb_credentials
    probe = probe or host_reachable
    if env_mode := os.environ.get("WANDB_MODE"):
        return env_mode, f"WANDB_MODE={env_mode}"
    if offline:
        return "offline", "offline: true in the logger config"
    host = host or wandb_host()
    if not has_credentials(host):
        return "offline", f"no API key for {host} in WANDB_API_KEY or ~/.netrc"
    if not probe(host, timeout_s):
        return "offline", f"{host} did not accept a connection within {timeout_s:g} s"
    return "online", f"API key found and {host} reachable"


#: WANDB_MODE spellings that ``wandb.init(mode=...)`` does not take, and what they mean.
INIT_MODES = {"dryrun": "offline", "run": "online"}


def _is_offline(mode: str) -> bool:
    return mode in ("offline", "dryrun")


# --------------------------------------------------------------------------- names and groups
def run_name_and_group(
    *,
    task_name: str,
    mode: RunMode | str | None = None,
    override_dirname: str = "",
    sweep_dir: str | None = None,
    job_num: int | None = None,
) -> tuple[str, str | None]:
    """The wandb run name and group of a Hydra job.

    Name: the job's overrides (``hydra.job.override_dirname``), else the task name (with the job
    number in a sweep, so names stay distinct). Group: the sweep folder's name in a multirun, so
    every point of one sweep lands in one group; none for a single run.
    """
    multirun = mode == RunMode.MULTIRUN or str(mode).upper() == "MULTIRUN"
    name = override_dirname or task_name
    if multirun and not override_dirname and job_num is not None:
        name = f"{task_name}-{job_num}"
    group = Path(sweep_dir).name if multirun and sweep_dir else None
    return name, group


def logger_context(cfg: DictConfig) -> dict[str, Any]:
    """``build_loggers``'s keyword arguments for this job, from ``cfg`` and Hydra's runtime."""
    task_name = str(cfg.get("task_name") or "run")
    name, group = task_name, None
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        name, group = run_name_and_group(
            task_name=task_name,
            mode=hydra.get("mode"),
            override_dirname=hydra.job.get("override_dirname") or "",
            sweep_dir=hydra.sweep.get("dir"),
            job_num=hydra.job.get("num"),
        )
    return {
        "run_dir": _run_dir(cfg),
        "run_name": name,
        "sweep_group": group,
        "hparams": resolved_config(cfg),
    }


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The task's config (without ``hydra``) as plain values, resolved where it can be."""
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException:  # an interpolation needing a runtime that is absent
        return OmegaConf.to_container(task, resolve=False)  # type: ignore[return-value]


# --------------------------------------------------------------------------- loggers
class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that finishes its run when training ends and never crashes on
    the network.

    * ``finalize`` (end of ``fit``/``validate``/``test``, or a failure) calls ``run.finish()``, so
      the next job of a sweep in the same process starts its own run. A later use of the logger
      resumes the same run id.
    * An online ``wandb.init`` that fails on the network (timeout, refused, rejected key) is
      retried offline, with one line saying how to sync later.
    * A run left open in this process by an earlier job is finished first; Lightning would
      otherwise silently log into it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            # Lightning always passes anonymous=None, which recent wandb warns about on every run.
            self._wandb_init.pop("anonymous", None)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            import wandb

            if wandb.run is not None:
                _say(f"wandb: finishing the run left open by an earlier job ({wandb.run.name})")
                wandb.run.finish()
            try:
                return super().experiment
            except wandb.errors.CommError as err:
                if _is_offline(str(self._wandb_init.get("mode") or "")):
                    raise
                first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
                self._wandb_init["mode"] = "offline"
                self._log_model = False
                _say(
                    f"wandb: online start failed ({first_line}); logging offline instead. "
                    f"{sync_hint(self._save_dir)}"
                )
        return super().experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        run = self._experiment
        if run is None or not hasattr(run, "finish"):
            return
        self._id = self._wandb_init["id"] = run.id
        self._experiment = None
        run.finish(exit_code=0 if status in ("success", "finished") else 1)


def sync_hint(save_dir: str | os.PathLike[str] | None) -> str:
    """How to upload an offline run later."""
    folder = Path(save_dir or ".") / "wandb"
    return f"Upload later with: wandb sync {folder}/offline-run-*"


def build_loggers(
    logger_cfg: DictConfig | None,
    *,
    run_dir: str | os.PathLike[str],
    run_name: str,
    sweep_group: str | None = None,
    hparams: dict[str, Any] | None = None,
) -> list[Logger]:
    """Instantiate the ``logger`` group; add a CSV logger to any non-empty set that lacks one.

    Every logger gets ``hparams`` (the resolved config). An empty group (``logger=none``) stays
    empty. Wandb entries get their mode, name, group, config and timeouts; see the module doc.
    """
    entries = [
        entry
        for entry in (logger_cfg or {}).values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]
    loggers: list[Logger] = []
    for entry in entries:
        cls = get_class(entry._target_)
        if issubclass(cls, _LightningWandbLogger):
            loggers.append(_build_wandb(entry, cls, run_name, sweep_group, hparams))
        else:
            loggers.append(instantiate(entry, _convert_="all"))
    if loggers and not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.insert(0, CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    for logger in loggers:
        if hparams and not isinstance(logger, _LightningWandbLogger):
            logger.log_hyperparams(hparams)
    return loggers


def _build_wandb(
    entry: DictConfig,
    cls: type[_LightningWandbLogger],
    run_name: str,
    sweep_group: str | None,
    hparams: dict[str, Any] | None,
) -> _LightningWandbLogger:
    """A wandb logger whose mode is decided now, before ``wandb.init`` runs."""
    try:
        import wandb
    except ImportError as err:
        raise ModuleNotFoundError(
            "logger=wandb needs the wandb package: pip install wandb (or pip install -e '.[wandb]')"
        ) from err
    if cls is _LightningWandbLogger:
        cls = WandbLogger  # the subclass that finishes its run and falls back to offline
    options = OmegaConf.to_container(entry, resolve=True)
    assert isinstance(options, dict)
    options.pop("_target_")
    offline = bool(options.pop("offline", False))
    init_timeout = options.pop("init_timeout", DEFAULT_INIT_TIMEOUT_S)
    finish_timeout = options.pop("finish_timeout", DEFAULT_FINISH_TIMEOUT_S)
    save_dir = options.get("save_dir") or options.get("dir") or "."

    mode: str | None = None  # other ranks never create a run: nothing to decide there
    if rank_zero_only.rank == 0:
        mode, reason = choose_wandb_mode(offline=offline)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if _is_offline(mode):
            _say(
                f"wandb: logging offline to {Path(save_dir) / 'wandb'} ({reason}). "
                f"{sync_hint(save_dir)}"
            )
            if options.get("log_model"):
                _say("wandb: log_model needs an online run; checkpoints stay in the run folder")
                options["log_model"] = False
        # Passed explicitly even when it comes from WANDB_MODE: wandb reads the environment once
        # per process, so a later job (or a changed variable) would otherwise get a stale mode.
        mode = INIT_MODES.get(mode, mode)

    settings = wandb_timeouts(wandb.Settings, init_timeout, finish_timeout)
    settings.update(options.pop("settings", None) or {})
    options["name"] = options.get("name") or run_name
    options["group"] = options.get("group") or sweep_group
    if hparams:
        options["config"] = {**hparams, **(options.get("config") or {})}
    return cls(mode=mode, settings=settings, **options)


def wandb_timeouts(
    settings_cls: type, init_timeout: float | None, finish_timeout: float | None
) -> dict[str, float]:
    """wandb settings for the two timeouts, unless the environment sets them or this wandb
    version does not know them (``finish_timeout`` is recent)."""
    known = getattr(settings_cls, "model_fields", {"init_timeout": None})
    wanted = {"init_timeout": init_timeout, "finish_timeout": finish_timeout}
    return {
        key: float(value)
        for key, value in wanted.items()
        if value is not None and key in known and f"WANDB_{key.upper()}" not in os.environ
    }
