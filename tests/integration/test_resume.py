"""Crash-safe checkpoints and ``cass-pretrain resume=<run>``: atomic saves, kill -9, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.loggers import WandbLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from app_helpers import app_env_with_tests, compose_app, run_app
from cass_lightning import CASSModule
from cass_lightning.apps import pretrain as pretrain_app
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.apps.run.console import RunStopped
from cass_lightning.apps.run.loggers import build_loggers
from cass_lightning.apps.run.resume import ResumeError, plan_start, resume_argv
from cass_lightning.apps.run.runfolder import LOCK_FILE
from cass_lightning.callbacks.checkpoint import (
    AtomicCheckpointIO,
    LastCheckpoint,
    atomic_checkpoint_plugin,
)
from cass_lightning.io import atomic_write, is_temp_file


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through the project's one atomic writer, as checkpoints are written."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


#: A tiny run: 6 synthetic classes x 8 images, batch 8 (drop_last) -> 6 optimizer steps per epoch.
TINY_RUN = [
    "debug=tiny",
    "data.images_per_class=8",
    "print_config=false",
    "rich_progress_bar=false",
    "trainer.enable_progress_bar=false",
]
STEPS_PER_EPOCH = 6 * 8 // 8
#: The killed run added a test callback (a _target_): resuming it trusts the folder, ours.
TRUSTED = "resume_trust=true"


class SlowSteps(L.Callback):
    """Sleeps after every step, so a test can kill the run between two saves (used by path)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


class PoisonWeightsAt(L.Callback):
    """Makes one weight NaN right after optimizer step ``step``, as a diverging update would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: object):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class SignalAtTheEnd(L.Callback):
    """Sends this process SIGTERM as the last epoch's last step ends (as a scheduler would):
    Lightning stops after marking the epoch done, before ``on_train_end`` exports."""

    def on_train_epoch_end(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


#: The parts of a Lightning checkpoint that resuming reads first (the weights are not checked).
FAKE_CHECKPOINT = {"state_dict": {}, "global_step": 3, "loops": {}, "optimizer_states": []}


def _fake_run(folder: Path, overrides: list[str]) -> Path:
    """A run folder as a killed ``cass-pretrain`` leaves it: saved overrides and a last.ckpt."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    (folder / "checkpoints").mkdir()
    atomic_torch_save(FAKE_CHECKPOINT, folder / "checkpoints" / "last.ckpt")
    return folder


# --- atomic checkpoint writes
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, target)

    def half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, target)
    monkeypatch.undo()

    kept = torch.load(target, weights_only=True)
    assert kept["global_step"] == 1 and torch.equal(kept["w"], torch.ones(1000))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_a_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    """SIGKILL halfway through writing: the old file is whole; the leftover never looks like one."""
    target = tmp_path / "last.ckpt"
    atomic_torch_save({"global_step": 1}, target)
    script = (
        "import os, signal, torch\n"
        "from cass_lightning.io import atomic_write\n"
        "def half(obj, f, *a, **k):\n"
        "    f.write(b'PK half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = half\n"
        f"atomic_write({str(target)!r}, lambda h: torch.save({{'global_step': 2}}, h))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(target, weights_only=True) == {"global_step": 1}
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and is_temp_file(leftovers[0])
    assert leftovers[0].name.startswith(".") and not leftovers[0].name.endswith(".ckpt")


def _tiny_trainer(tmp_path: Path, callbacks: list[L.Callback], max_epochs: int) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        plugins=[atomic_checkpoint_plugin()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _images(batches: int) -> DataLoader:
    return DataLoader(torch.rand(batches * 4, 3, 32, 32), batch_size=4)


def test_last_checkpoint_every_n_steps_and_at_epoch_ends(tmp_path, tiny_kwargs):
    """With 5 steps per epoch: saves at steps 2 and 4, at the epoch's end, then 6, 8, end."""
    saved_at: list[int] = []
    last = LastCheckpoint(tmp_path / "checkpoints", every_n_train_steps=2)
    trainer = _tiny_trainer(tmp_path, [last], max_epochs=2)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    save = trainer.strategy.checkpoint_io.save_checkpoint

    def spy(checkpoint, path, storage_options=None):
        saved_at.append(checkpoint["global_step"])
        assert Path(path).name == "last.ckpt"
        save(checkpoint, path, storage_options)

    trainer.strategy.checkpoint_io.save_checkpoint = spy
    trainer.fit(CASSModule(**tiny_kwargs), _images(5))
    # Epoch 1: steps 1-5, epoch 2: steps 6-10. Step 10 is an epoch's last batch: the epoch-end
    # save stands for it (a save before the epoch's end would make resuming skip that end).
    assert saved_at == [2, 4, 5, 6, 8, 10]
    assert torch.load(last.last_model_path, weights_only=True)["global_step"] == 10
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]


def test_non_finite_weights_are_never_saved(tmp_path, tiny_kwargs):
    """A diverged update at step 4 is not saved; the next step stops on the non-finite loss."""
    last = LastCheckpoint(tmp_path / "checkpoints", every_n_train_steps=2)
    trainer = _tiny_trainer(tmp_path, [PoisonWeightsAt(4), last], max_epochs=1)
    with pytest.raises(FloatingPointError, match="non-finite CASS loss"):
        trainer.fit(CASSModule(**tiny_kwargs), _images(8))
    kept = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert kept["global_step"] == 2
    assert all(
        torch.isfinite(v).all() for v in kept["state_dict"].values() if v.is_floating_point()
    )


# --- resume on the command line
def test_resume_argv_recomposes_the_saved_run(tmp_path):
    # A sweep job's folder: ',' and '=' in its name must reach Hydra as one literal path.
    run = _fake_run(
        tmp_path / "0_data.batch_size=4,debug=tiny",
        ["debug=tiny", "data.batch_size=4", "trainer.max_epochs=3", "resume=null"],
    )
    argv = ["cass-pretrain", f"resume={run}", "trainer.max_epochs=5", "--cfg", "job"]
    out = resume_argv(argv)
    quoted = f"'{run}'"
    assert out == [
        "cass-pretrain",
        "debug=tiny",
        "data.batch_size=4",
        "trainer.max_epochs=5",  # given with resume=: wins over the saved 3
        f"resume={quoted}",
        f"hydra.run.dir={quoted}",
        "--cfg",
        "job",
    ]
    # Expanding the command line writes nothing (the task keeps .hydra/*.yaml once it has
    # claimed the folder, before it writes its own).
    before = _digest(run)
    resume_argv(argv[:-2])
    assert _digest(run) == before and not (run / ".hydra" / "part1").exists()
    # Without resume= nothing changes.
    assert resume_argv(["cass-pretrain", "debug=tiny"]) == ["cass-pretrain", "debug=tiny"]
    assert resume_argv(["x", "resume=null", "a=1"]) == ["x", "resume=null", "a=1"]


def test_resume_argv_accepts_the_relaunch_of_a_ddp_rank(tmp_path):
    """Lightning relaunches the (rewritten) command for the other ranks with hydra.run.dir."""
    run = _fake_run(tmp_path / "run", ["debug=tiny"])
    first = resume_argv(["cass-pretrain", f"resume={run}"])
    relaunch = [*first, f'hydra.run.dir="{run}"', "hydra.output_subdir=null"]
    again = resume_argv(relaunch)
    assert again.count(f"hydra.run.dir='{run}'") == 1 and "hydra.output_subdir=null" in again
    assert again.count("debug=tiny") == 1


def test_resume_of_a_missing_or_invalid_folder_says_so(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "runs" / "no-such-run"
    with pytest.raises(ResumeError, match=f"resume={missing}: no such run folder"):
        resume_argv(["cass-pretrain", f"resume={missing}"])

    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(ResumeError, match=r"no checkpoints/last\.ckpt in that folder"):
        resume_argv(["cass-pretrain", f"resume={empty}"])

    no_overrides = tmp_path / "no-hydra"
    (no_overrides / "checkpoints").mkdir(parents=True)
    atomic_torch_save(FAKE_CHECKPOINT, no_overrides / "checkpoints" / "last.ckpt")
    with pytest.raises(ResumeError, match=r"no \.hydra/overrides\.yaml"):
        resume_argv(["cass-pretrain", f"resume={no_overrides}"])

    run = _fake_run(tmp_path / "run", ["debug=tiny"])
    with pytest.raises(ResumeError, match="cannot be combined with -m"):
        resume_argv(["cass-pretrain", "-m", f"resume={run}"])

    # The console entry point turns it into one line on stderr and a non-zero exit.
    monkeypatch.setattr(sys, "argv", ["cass-pretrain", f"resume={missing}"])
    with pytest.raises(SystemExit) as exit_info:
        pretrain_app.main()
    assert "no such run folder" in str(exit_info.value.code)
    assert not missing.exists()


def test_resume_of_a_still_running_run_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run", ["debug=tiny"])
    # A live process holding the run folder's lock, as a running cass-pretrain would.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": socket.gethostname(), "started": "now"}
        (run / LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(ResumeError, match=f"still running \\(process {other.pid}"):
            resume_argv(["cass-pretrain", f"resume={run}"])
    finally:
        other.kill()
        other.wait()
    assert resume_argv(["cass-pretrain", f"resume={run}"])  # dead now: resumable


def test_resume_of_a_finished_run_changes_nothing(tmp_path, monkeypatch):
    pretrain(compose_app(tmp_path, TINY_RUN))
    run = tmp_path / "run"
    assert (run / "export" / "meta.json").is_file()
    before = _digest(run)

    monkeypatch.setattr(sys, "argv", ["cass-pretrain", f"resume={run}"])
    with pytest.raises(SystemExit) as exit_info:
        pretrain_app.main()
    assert "already finished" in str(exit_info.value.code)
    assert str(run / "export") in str(exit_info.value.code)
    # The task refuses too, when called directly.
    with pytest.raises(ResumeError, match="already finished"):
        pretrain(compose_app(tmp_path, [*TINY_RUN, f"resume={run}"]))
    assert _digest(run) == before


def test_a_run_stopped_between_its_last_step_and_its_export_exports_on_resume(tmp_path):
    """The printed resume command of a run stopped after training but before (or during) its
    export finishes the export: the cut-short files are kept aside, no step is trained again."""
    from safetensors.torch import load_file

    first = pretrain(compose_app(tmp_path, TINY_RUN))
    run = tmp_path / "run"
    os.rename(run / "export" / "meta.json", tmp_path / "meta.json")  # the export cut short
    # the command it prints (which restates the data folder outside the run) is accepted
    printed = ["cass-pretrain", f"resume={run}", f"paths.data_dir={tmp_path / 'data'}"]
    assert resume_argv(printed)
    result = pretrain(compose_app(tmp_path, [*TINY_RUN, f"resume={run}"]))
    assert (run / "export" / "meta.json").is_file()
    assert sorted(p.name for p in (run / "export.partial-1").iterdir()) == [
        "cnn.safetensors", "timm-cnn", "timm-vit", "vit.safetensors"]  # fmt: skip
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]  # fmt: skip
    for name, value in load_file(run / "export" / "cnn.safetensors").items():
        assert torch.equal(value, state[f"cnn.{name}"]), name
    assert result["steps"] == first["steps"] and len(result["attempts"]) == 2
    assert result["attempts"][1]["steps"] == 0
    with pytest.raises(ResumeError, match="already finished"):
        resume_argv(printed)
    # Stopped after the export but before the summary: the resume writes the summary only.
    exported = _digest(run / "export")
    os.rename(run / "summary.json", tmp_path / "summary.json")
    again = pretrain(compose_app(tmp_path, [*TINY_RUN, f"resume={run}"]))
    assert (run / "summary.json").is_file() and _digest(run / "export") == exported
    assert again["export_dir"] == str(run / "export") and len(again["attempts"]) == 3


def test_sigterm_on_the_last_step_stops_and_the_printed_command_finishes_the_export(tmp_path):
    """The issue's case: SIGTERM on the last optimizer step. The run saves and stops before its
    export; the printed resume command is accepted and ends with the export, no step retrained."""
    stop = "+callbacks.stop._target_=test_resume.SignalAtTheEnd"
    with pytest.raises(RunStopped) as stopped:
        pretrain(compose_app(tmp_path, [*TINY_RUN, stop]))
    run = tmp_path / "run"
    printed = next(line.strip() for line in stopped.value.message.splitlines()
                   if line.strip().startswith(f"cass-pretrain resume={run}"))  # fmt: skip
    assert not (run / "export" / "meta.json").exists()
    assert resume_argv([*shlex.split(printed), TRUSTED])  # the printed command: not refused
    result = pretrain(compose_app(tmp_path, [*TINY_RUN, f"resume={run}"]))
    assert (run / "export" / "meta.json").is_file()
    assert result["steps"] == STEPS_PER_EPOCH and result["attempts"][1]["steps"] == 0


def test_resume_must_name_the_run_folder_itself(tmp_path):
    other = _fake_run(tmp_path / "other", ["debug=tiny"])
    cfg = compose_app(tmp_path, [*TINY_RUN, f"resume={other}"])
    with pytest.raises(ResumeError, match="writes to"):
        plan_start(cfg, tmp_path / "run")


def test_a_resumed_wandb_logger_keeps_the_run_id(tmp_path):
    run = _fake_run(tmp_path / "run", ["debug=tiny", "logger=wandb"])
    (run / "run_info.json").write_text(json.dumps({"run_id": "k3y1d0ne", "starts": []}))
    cfg = compose_app(tmp_path, [*TINY_RUN, "logger=wandb", f"resume={run}"])
    start = plan_start(cfg, run)
    assert start.resuming and start.run_id == "k3y1d0ne"
    loggers = build_loggers(start.logger_cfg(cfg.logger), run_dir=run, run_name="x")
    wandb_logger = next(lg for lg in loggers if isinstance(lg, WandbLogger))
    assert wandb_logger._wandb_init["id"] == "k3y1d0ne"
    assert wandb_logger._wandb_init["resume"] == "allow"
    assert "id" not in cfg.logger.wandb  # the config itself is left as composed

    fresh = plan_start(compose_app(tmp_path, [*TINY_RUN, "logger=wandb"]), tmp_path / "run")
    assert not fresh.resuming and len(fresh.run_id) == 8 and fresh.run_id != "k3y1d0ne"


# --- kill -9, then resume
def _wait_for_first_checkpoint(proc: subprocess.Popen, runs: Path, log: Path) -> Path:
    """The run folder, as soon as it holds last.ckpt and the metrics logged before it."""
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no last.ckpt within 300 s"
        for ckpt in runs.glob("debug/*/checkpoints/last.ckpt"):
            if (ckpt.parents[1] / "csv" / "metrics.csv").is_file():
                return ckpt.parents[1]
        time.sleep(0.05)


def _read_csv_steps(path: Path) -> list[int]:
    import csv

    with path.open(newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_in_its_folder_to_the_same_end(tmp_path):
    epochs = 2
    app = [sys.executable, "-m", "cass_lightning.apps.pretrain"]
    first = [
        *TINY_RUN,
        f"trainer.max_epochs={epochs}",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "+callbacks.slow._target_=test_resume.SlowSteps",  # room to kill between two saves
        "+callbacks.slow.seconds=0.25",
    ]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen([*app, *first], env=app_env_with_tests(tmp_path),
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            run = _wait_for_first_checkpoint(proc, tmp_path / "runs", tmp_path / "first.log")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < killed_at < epochs * STEPS_PER_EPOCH
    assert not (run / "export").exists()
    old_steps = _read_csv_steps(run / "csv" / "metrics.csv")
    first_overrides = (run / ".hydra" / "overrides.yaml").read_text()
    first_uuid = json.loads((run / "run_info.json").read_text())["run_uuid"]

    # The relative folder, from where the first run was started; no more sleeping.
    resumed = run_app(
        tmp_path,
        [
            "cass_lightning.apps.pretrain",
            f"resume={run.relative_to(tmp_path)}",
            "++callbacks.slow.seconds=0",
            TRUSTED,
        ],
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run folder:      {run.resolve()}" in resumed.stdout
    assert [p for p in (tmp_path / "runs" / "debug").iterdir()] == [run]  # no new folder

    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == epochs * STEPS_PER_EPOCH  # as if never stopped
    assert (run / "export" / "meta.json").is_file()
    # The first start's metrics are kept beside the resumed ones.
    assert _read_csv_steps(run / "csv" / "metrics.part1.csv") == old_steps
    assert max(_read_csv_steps(run / "csv" / "metrics.csv")) >= epochs * STEPS_PER_EPOCH - 1
    assert (run / ".hydra" / "part1" / "overrides.yaml").read_text() == first_overrides
    info = json.loads((run / "run_info.json").read_text())
    assert len(info["starts"]) == 2
    assert info["run_uuid"] == first_uuid and len(first_uuid) == 32  # drawn once, kept
    assert info["starts"][1]["resumed_from"] == str(run / "checkpoints" / "last.ckpt")


def test_a_slurm_job_requeued_after_its_run_finished_hands_back_the_checked_summary(
    tmp_path, monkeypatch
):
    import signal as signals

    from cass_lightning.io import RecordError

    kept = {s: signals.getsignal(s) for s in (signals.SIGUSR1, signals.SIGUSR2)}
    jobs = {"SLURM_JOB_ID": "31", "ENVIRONMENT": "BATCH", "SLURM_PROCID": "0"}
    try:
        for key, value in {**jobs, "SLURM_RESTART_COUNT": "0"}.items():
            monkeypatch.setenv(key, value)
        first = pretrain(compose_app(tmp_path, TINY_RUN))
        run = tmp_path / "run"
        before = _digest(run)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the scheduler started it again
        again = pretrain(compose_app(tmp_path, TINY_RUN))
        assert again["metrics"] == first["metrics"] and _digest(run) == before  # nothing rerun
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "metrics": [1, 2]}))
        with pytest.raises(RecordError, match="metrics holds a list, not an object"):
            pretrain(compose_app(tmp_path, TINY_RUN))
    finally:
        for signum, handler in kept.items():  # a run in a SLURM job leaves them ignored
            signals.signal(signum, handler)
