"""Composing the Hydra apps' configs in-process, and environments for running them as programs.

Shared by the app tests so every test composes exactly as ``@hydra.main`` would, with run and
data folders inside the test's tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from cass_lightning.apps.run.common import CONFIG_DIR


def compose_app(
    tmp_path: Path,
    overrides: list[str],
    *,
    config_name: str = "pretrain",
    output_dir: Path | None = None,
    sweep_dir: Path | None = None,
) -> DictConfig:
    """Compose ``config_name`` with data under ``tmp_path/data`` and the run folder
    ``output_dir`` (default ``tmp_path/run``); with ``sweep_dir``, as one job of a multirun."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            return_hydra_config=True,
            overrides=[f"paths.data_dir={tmp_path / 'data'}", *overrides],
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir or tmp_path / "run")
        cfg.hydra.job.num = 0
        if sweep_dir is not None:
            cfg.hydra.mode = RunMode.MULTIRUN
            cfg.hydra.sweep.dir = str(sweep_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for running an app as a program: offline, one thread, folders in tmp_path."""
    return {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "CASS_DATA_ROOT": str(tmp_path / "data"),
        "CASS_OUTPUT_ROOT": str(tmp_path / "runs"),
        **extra,
    }


TESTS = Path(__file__).resolve().parent


def app_env_with_tests(tmp_path: Path, **extra: str) -> dict[str, str]:
    """:func:`app_env` with the test folders importable, so the program can instantiate a
    callback defined in a test module (``+callbacks.sig._target_=test_safety.SignalAt``)."""
    paths = [str(TESTS / "integration"), str(TESTS), os.environ.get("PYTHONPATH")]
    return app_env(tmp_path, PYTHONPATH=os.pathsep.join(filter(None, paths)), **extra)


def run_app(
    tmp_path: Path, args: list[str], timeout: int = 600, new_session: bool = False
) -> subprocess.CompletedProcess:
    """``python -m <args>`` run from ``tmp_path`` as a user would (environment of
    :func:`app_env_with_tests`), its output captured as text; with ``new_session`` in a process
    group of its own (so a signal to the group reaches only it and its children)."""
    return subprocess.run(
        [sys.executable, "-m", *args], env=app_env_with_tests(tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=timeout, start_new_session=new_session,
    )  # fmt: skip
