"""DDP on 2 CPU processes (gloo): same results as one process; apps under DDP and multirun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from app_helpers import app_env

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddp_equivalence.py"


def _run(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=app_env(tmp_path), capture_output=True, text=True,
        timeout=timeout, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Same global batch and seed: same losses and parameters after 3 Adam steps."""
    for devices in (1, 2):
        proc = _run([str(SCRIPT), "--devices", str(devices), "--out", f"r{devices}.pt"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(tmp_path / "r1.pt", weights_only=True)
    two = torch.load(tmp_path / "r2.pt", weights_only=True)
    assert len(one["losses"]) == len(two["losses"]) == 3
    assert one["losses"] == pytest.approx(two["losses"], abs=1e-5)
    assert one["state"].keys() == two["state"].keys()
    # Adam normalises each element, so the float rounding of a different all-reduce order shows
    # as differences of up to ~1e-4 in the weights; one Adam step moves a weight by up to 1e-3
    # (lr), so a wrong batch or a missing gradient average shows as ~1e-3 everywhere.
    for key, value in one["state"].items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(two["state"][key], value, atol=2e-4, rtol=0)


MODULE = ["-m", "cass_lightning.apps.pretrain"]
TINY = ["debug=tiny", "print_config=false", "rich_progress_bar=false", "trainer.accelerator=cpu"]
APP = [*MODULE, *TINY]


@pytest.mark.slow
def test_pretrain_app_under_ddp_makes_one_run_folder(tmp_path):
    proc = _run([*APP, "trainer=ddp", "trainer.devices=2", "hydra.run.dir=runs/ddp"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "export" / "meta.json").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]


@pytest.mark.slow
def test_multirun_with_script_relaunching_ddp_is_refused_up_front(tmp_path):
    proc = _run(
        [*MODULE, "-m", *TINY, "trainer=ddp", "trainer.devices=2", "data.batch_size=4,8"], tmp_path
    )
    assert proc.returncode != 0
    assert "trainer.strategy=ddp_spawn" in proc.stderr + proc.stdout
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_multirun_with_ddp_spawn_runs_each_point_once(tmp_path):
    proc = _run(
        [*MODULE, "-m", *TINY, "trainer=ddp", "trainer.strategy=ddp_spawn", "trainer.devices=2",
         "data.batch_size=4,8"],
        tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "runs" / "debug" / "multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert len(jobs) == 2 and all(
        (sweeps[0] / j / "checkpoints" / "last.ckpt").is_file() for j in jobs
    )
    assert len(list((tmp_path / "runs").rglob("last.ckpt"))) == 2
