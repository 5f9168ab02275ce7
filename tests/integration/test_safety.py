"""Safety and failure behaviour of the apps: hostile run folders and checkpoints, concurrent runs,
signals, refused writes, refused settings, the run log and file permissions.

Each hostile file here would create ``marker`` if it were ever executed; none ever may.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import timm
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from safetensors.torch import save_file

from app_helpers import app_env_with_tests, compose_app, run_app
from cass_lightning import io as cass_io
from cass_lightning.apps import finetune as finetune_app
from cass_lightning.apps import pretrain as pretrain_app
from cass_lightning.apps.run.console import RunStopped, reported_errors
from cass_lightning.apps.run.overrides import refused_overrides
from cass_lightning.apps.run.resume import ResumeError, resume_argv
from cass_lightning.apps.run.runfolder import LOCK_FILE, RunFolderBusy, claim_run_folder
from cass_lightning.callbacks.checkpoint import AtomicCheckpointIO
from cass_lightning.io import UnreadableFileError

CONF = Path(pretrain_app.CONFIG_DIR)
TINY_RUN = [
    "debug=tiny",
    "data.images_per_class=8",
    "print_config=false",
    "rich_progress_bar=false",
    "trainer.enable_progress_bar=false",
]
STEPS_PER_EPOCH = 6 * 8 // 8  # 6 synthetic classes x 8 images, batch 8


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


class Hostile:
    """Unpickling this creates ``path``: what a hostile pickle would do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class SignalAt(L.Callback):
    """Sends ``signum`` to this very process after optimizer step ``step`` (a pre-emption), or
    with ``group`` to its whole process group, DataLoader workers included, as a terminal's
    Ctrl-C or a scheduler does (only when this process leads its own group)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM, group: bool = False) -> None:
        self.step, self.signum, self.group = step, int(signum), group

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            if not self.group:
                os.kill(os.getpid(), self.signum)
                return
            assert os.getpgid(0) == os.getpid(), "start the run in a session of its own"
            os.killpg(os.getpgid(0), self.signum)


class SlowSteps(L.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: object) -> None:
        time.sleep(self.seconds)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _checkpoint(path: Path, **extra: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {}, "global_step": 3, "loops": {}, "optimizer_states": [], **extra}
    torch.save(state, path)
    return path


def _run_folder(folder: Path, overrides: list[str], ckpt: bytes | None = None) -> Path:
    """A stopped run's folder: saved overrides, last.ckpt, metrics and run_info.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    last = _checkpoint(folder / "checkpoints" / "last.ckpt")
    if ckpt is not None:
        last.write_bytes(ckpt)
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    (folder / "csv" / "hparams.yaml").write_text("seed: 77\n")
    (folder / "run_info.json").write_text(json.dumps({"run_id": "abcd1234", "starts": [{}]}))
    return folder


def _main(app, argv: list[str], monkeypatch) -> SystemExit | None:
    """Run an app's console entry point in this process; its SystemExit, if any. The logging
    handlers Hydra installs (on this test's captured streams) are removed afterwards."""
    monkeypatch.setattr(sys, "argv", [app.__name__, *argv])
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        app.main()
    except SystemExit as exit_:
        return exit_
    finally:
        for handler in logging.root.handlers[:]:
            if handler not in handlers:
                logging.root.removeHandler(handler)
                handler.close()
        logging.root.setLevel(level)
    return None


# ============================================================== 2. resume= and saved overrides
@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("+callbacks.x._target_=builtins.open", "_target_"),
        ("callbacks.export_backbones._target_=os.system", "_target_"),
        ("model={_target_: builtins.exec, _args_: [print(1)]}", "_target_"),
        ("+callbacks.x={seconds: 1}", "adds a new key"),
        ("++logger.y.save_dir=x", "adds a new key"),
        ("+model.extra={a: 1}", "adds a new key"),
        ("+trainer.limit_train_batches=2", "adds a new key"),
        ("~logger", "deletes a setting"),
        ("model.cnn=${oc.env:HOME}", "interpolation"),
        ("data.root=${oc.decode:'{a: 1}'}", "interpolation"),
        ("model.mean=${data.mean}", "interpolation"),
        ("data.root='\\${oc.env:HOME}'", "interpolation"),
        ("model.cnn_kwargs={a: [1, '${oc.env:HOME}']}", "interpolation"),
        ('callbacks.images_per_second="${${task_name}:x}"', "interpolation"),
        ("hydra.searchpath=[file:///tmp/evil]", "changes Hydra"),
        ("hydra/job_logging=disabled", "changes Hydra"),
        ("data=../../evil", "not one of the app's data configs"),
        ("data=nowhere", "not one of the app's data configs"),
        ("data=_common", "not one of the app's data configs"),
        ("remedy=[gentle,evil]", "remedy=evil"),
        ("evil/group=x", "config group evil/group"),
        ("data@model=synthetic", "another package"),
        ("seed=1,2", "sweep"),
    ],
)
def test_overrides_a_user_could_not_type_are_named(override, reason):
    refused = refused_overrides([override], CONF, {"hydra.run.dir"})
    assert len(refused) == 1 and reason in refused[0][1], refused


def test_overrides_a_user_types_pass():
    typed = [
        "debug=tiny",
        "data=isic2019",
        "model/optimizer=adamw",
        "remedy=[gentle,variance]",
        "data.batch_size=8",
        "trainer.max_epochs=3",
        "model.cnn_weights_file=/w/r50.safetensors",
        "model.cnn_kwargs={drop_path_rate: 0.1}",
        "data.root='/data/a b,c=d'",
        "task_name=oc.env",
        "hydra.run.dir=/runs/a",
        "experiment=quickstart",
        "logger=null",
    ]
    assert refused_overrides(typed, CONF, {"hydra.run.dir"}) == []


def test_resume_refuses_a_folder_whose_overrides_would_run_code(tmp_path, monkeypatch):
    """Once: the resumed run instantiated the saved callback and created the file."""
    marker = tmp_path / "marker"
    hostile = [
        "debug=tiny",
        "+callbacks.x._target_=builtins.open",
        f"+callbacks.x._args_=[{marker},w]",
        "resume_trust=true",
    ]
    run = _run_folder(tmp_path / "run", hostile)
    before = _digest(run)
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and exit_.code != 0
    message = str(exit_.code)
    assert "'+callbacks.x._target_=builtins.open' names a Hydra _target_" in message
    assert "+callbacks.x._args_" in message and "resume_trust=true" in message
    assert not marker.exists() and _digest(run) == before
    # resume_trust=true given by the user (never the folder's own) applies them as they are.
    argv = resume_argv(["cass-pretrain", f"resume={run}", "resume_trust=true", "--cfg", "job"])
    assert "+callbacks.x._target_=builtins.open" in argv and "resume_trust=true" in argv
    assert not marker.exists()


# ======================================================== 3. checkpoints load weights-only
def test_checkpoint_io_never_runs_a_pickle_even_when_torch_is_told_to(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    path = _checkpoint(tmp_path / "hostile.ckpt", payload=Hostile(marker))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(UnreadableFileError, match=r"hostile\.ckpt .*code-running") as err:
        AtomicCheckpointIO().load_checkpoint(path)
    assert "weights_only=False" not in str(err.value) and not marker.exists()


def test_resume_from_a_hostile_last_ckpt_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    run = _run_folder(tmp_path / "run", ["debug=tiny"])
    _checkpoint(run / "checkpoints" / "last.ckpt", payload=Hostile(marker))
    before = _digest(run)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and "last.ckpt cannot be loaded" in str(exit_.code)
    assert "weights_only=False" not in str(exit_.code)
    assert not marker.exists() and _digest(run) == before


def test_fit_from_a_hostile_checkpoint_never_runs_it(tmp_path, monkeypatch, tiny_kwargs):
    """The path Lightning takes for ckpt_path (the resumed run's), through the plugin."""
    from cass_lightning import CASSModule
    from cass_lightning.callbacks import atomic_checkpoint_plugin

    marker = tmp_path / "marker"
    path = _checkpoint(tmp_path / "hostile.ckpt", payload=Hostile(marker))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=[atomic_checkpoint_plugin()],
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(torch.randn(4, 3, 32, 32), batch_size=4)
    with pytest.raises(UnreadableFileError):
        trainer.fit(CASSModule(**tiny_kwargs), loader, ckpt_path=path)
    assert not marker.exists()


# ============================================================== 4. one run per folder
def test_a_live_runs_lock_refuses_every_app_at_once(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {
            "pid": other.pid,
            "host": socket.gethostname(),
            "started": "t0",
            "command": "cass-pretrain debug=tiny",
        }
        (run / LOCK_FILE).write_text(json.dumps(holder))
        for app, overrides, name in (
            (pretrain_app.pretrain, TINY_RUN, "pretrain"),
            (finetune_app.finetune, ["weights=random", "model.timm_name=resnet10t"], "finetune"),
        ):
            cfg = compose_app(tmp_path, overrides, config_name=name)
            with pytest.raises(RunFolderBusy, match=rf"in use by another run: process {other.pid}"):
                app(cfg)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written
        assert not (tmp_path / "data").exists()
    finally:
        other.kill()
        other.wait()


def test_a_stale_lock_is_taken_over_and_every_lock_is_released(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with claim_run_folder(run):
        holder = json.loads((run / LOCK_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"] and holder["command"]
    assert "has ended without releasing it; taking it over" in capsys.readouterr().err
    assert not (run / LOCK_FILE).exists()
    with pytest.raises(RuntimeError, match="boom"), claim_run_folder(run):
        raise RuntimeError("boom")
    assert not (run / LOCK_FILE).exists()  # released after a failure too
    # A lock from another machine cannot be checked: refused, with what to do.
    (run / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunFolderBusy, match=rf"delete {run / LOCK_FILE}"), claim_run_folder(run):
        pass


@pytest.mark.slow
def test_two_runs_started_into_one_folder_one_is_refused_the_other_intact(tmp_path):
    app = [
        sys.executable,
        "-m",
        "cass_lightning.apps.pretrain",
        *TINY_RUN,
        "hydra.run.dir=runs/same",
        "trainer.max_epochs=2",
        "+callbacks.slow._target_=test_safety.SlowSteps",
        "+callbacks.slow.seconds=0.2",
    ]
    procs = [
        subprocess.Popen(
            [*app, f"seed={seed}"],
            env=app_env_with_tests(tmp_path),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outputs
    loser = next(i for i, p in enumerate(procs) if p.returncode == 1)
    winner_seed = 2 - loser
    assert "in use by another run" in outputs[loser][1]
    assert "Traceback" not in outputs[loser][1]
    run = tmp_path / "runs" / "same"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH
    assert (run / "export" / "meta.json").is_file() and not (run / LOCK_FILE).exists()
    assert f"seed={winner_seed}" in (run / ".hydra" / "overrides.yaml").read_text()
    info = json.loads((run / "run_info.json").read_text())
    assert len(info["starts"]) == 1 and f"seed={winner_seed}" in info["starts"][0]["overrides"]
    steps = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert steps[0].startswith("epoch,") or "step" in steps[0]
    assert sum(line == steps[0] for line in steps) == 1  # one run's metrics, one header


# ============================================================== 5. SIGINT / SIGTERM
def test_sigint_mid_epoch_saves_last_ckpt_and_names_the_resume_command(tmp_path, capsys):
    cfg = compose_app(
        tmp_path,
        [
            *TINY_RUN,
            "trainer.max_epochs=2",
            "+callbacks.sig._target_=test_safety.SignalAt",
            "+callbacks.sig.step=2",
            f"+callbacks.sig.signum={signal.SIGINT}",
        ],
    )
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as exit_, reported_errors():
        pretrain_app.pretrain(cfg)
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    run = tmp_path / "run"
    assert "Stopped by SIGINT at global step 2" in err
    assert f"cass-pretrain resume={run}" in err
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / "export").exists() and not (run / LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert f"cass-pretrain resume={run}" in (run / "pretrain.log").read_text()


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_ends_at_the_planned_step(tmp_path):
    """Once: exit 0, no checkpoint beyond the last periodic one, no export."""
    app = ["cass_lightning.apps.pretrain"]
    first = [
        *TINY_RUN,
        "hydra.run.dir=runs/pre",
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=100",
        "+callbacks.sig._target_=test_safety.SignalAt",
        "+callbacks.sig.step=3",
    ]
    proc = run_app(tmp_path, [*app, *first], timeout=600)
    run = (tmp_path / "runs" / "pre").resolve()
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "Stopped by SIGTERM at global step 3" in proc.stderr
    assert f"cass-pretrain resume={run}" in proc.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run / "export").exists()
    log = (run / "pretrain.log").read_text()
    assert "Stopped by SIGTERM" in log and "precision 32-true" in log

    resumed = run_app(
        tmp_path, [*app, f"resume={run}", "resume_trust=true", "~callbacks.sig"], timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 2 * STEPS_PER_EPOCH
    assert (run / "export" / "meta.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_with_loader_workers_stops_once_and_saves(tmp_path, signum):
    """Ctrl-C in a terminal and a scheduler's SIGTERM reach the DataLoader workers too: only the
    run reacts (one message, last.ckpt saved), the workers neither speak nor crash."""
    args = ["cass_lightning.apps.pretrain", *TINY_RUN, "hydra.run.dir=runs/group",
            "trainer.max_epochs=2", "data.num_workers=2", "data.persistent_workers=true",
            "+callbacks.sig._target_=test_safety.SignalAt", "+callbacks.sig.step=3",
            f"+callbacks.sig.signum={int(signum)}", "+callbacks.sig.group=true"]  # fmt: skip
    proc = run_app(tmp_path, args, new_session=True)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    assert proc.stderr.count(f"Received {name}: stopping") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    run = tmp_path / "runs" / "group"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


# ================================================== 6. a refused resume changes nothing
@pytest.mark.parametrize("damage", ["truncated", "empty", "not-a-checkpoint"])
def test_a_refused_resume_leaves_the_folder_byte_for_byte(tmp_path, monkeypatch, damage):
    good = _checkpoint(tmp_path / "good.ckpt").read_bytes()
    content = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not-a-checkpoint": b"just some text",
    }[damage]
    run = _run_folder(tmp_path / "run", ["debug=tiny"], ckpt=content)
    before = _digest(run)
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and "last.ckpt cannot be loaded as a checkpoint" in str(exit_.code)
    assert "Nothing was changed" in str(exit_.code)
    # The task refuses too, when called directly, before touching anything.
    with pytest.raises(ResumeError, match="cannot be loaded"):
        pretrain_app.pretrain(compose_app(tmp_path, [*TINY_RUN, f"resume={run}"], output_dir=run))
    assert _digest(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [".hydra", "checkpoints", "csv", "run_info.json"]
    )


# ============================================================== 7. named errors, exit 1
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("target", ["run_info.json", "last.ckpt"])
def test_a_full_or_read_only_disk_is_named(tmp_path, monkeypatch, capsys, code, target):
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if target in str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cass_io, "open", refusing_open, raising=False)
    cfg = compose_app(tmp_path, [*TINY_RUN, "callbacks.last_checkpoint.every_n_train_steps=2"])
    with pytest.raises(SystemExit) as exit_, reported_errors():
        pretrain_app.pretrain(cfg)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert f"Error: cannot write {tmp_path / 'run'}" in err and target in err
    assert f"({errno.errorcode[code]})" in err  # ENOSPC / EROFS, named
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_an_invalid_export_meta_json_is_named_when_fine_tuning(tmp_path, monkeypatch, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "meta.json").write_text('{"cnn": {"timm_name": "resnet10t",')
    argv = [
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'ft'}",
        f"weights={export}",
        "trainer.enable_progress_bar=false",
    ]
    exit_ = _main(finetune_app, argv, monkeypatch)
    err = capsys.readouterr().err
    assert exit_ is not None and exit_.code == 1 and "Traceback" not in err
    assert f"Error: {export / 'meta.json'} is not a valid export meta.json (not JSON" in err
    assert not (tmp_path / "ft" / "checkpoints").exists()


# ============================================================== 8. settings refused by name
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.img_size=33", r"img_size=33 is not a multiple of .* patch size 16.*=32 or 48"),
        ("model.optimizer.cnn_lr=-1", r"model\.optimizer\.cnn_lr must be"),
        ("trainer.max_epochs=0", r"trainer\.max_epochs must be >= 1"),
        ("++trainer.max_steps=0", r"trainer\.max_steps must be an integer >= 1, or -1"),
        ("data.batch_size=0", r"data\.batch_size must be an integer >= 1; got 0"),
        ("data.batch_size=-4", r"data\.batch_size must be an integer >= 1; got -4"),
    ],
)
def test_bad_settings_are_refused_by_name_before_training(tmp_path, capsys, override, message):
    cfg = compose_app(tmp_path, [*TINY_RUN, override])
    with pytest.raises(SystemExit) as exit_, reported_errors():
        pretrain_app.pretrain(cfg)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert re.search(f"Error: {message}", err), err
    assert "lr scaling" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("override", ["data.batch_size=0", "trainer.max_epochs=0"])
def test_fine_tuning_refuses_the_same_settings(tmp_path, override):
    cfg = compose_app(
        tmp_path, ["weights=random", "model.timm_name=resnet10t", override], config_name="finetune"
    )
    with pytest.raises(ValueError, match=override.split("=")[0].replace(".", r"\.")):
        finetune_app.finetune(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_exit_codes_of_the_console_app(tmp_path):
    app = ["cass_lightning.apps.pretrain", *TINY_RUN]
    usage = run_app(tmp_path, [*app, "model.no_such_key=1"], timeout=300)
    assert usage.returncode == 2, usage.stderr[-2000:]
    refused = run_app(tmp_path, [*app, "data.batch_size=0"], timeout=300)
    assert refused.returncode == 1
    assert "Error: data.batch_size must be an integer >= 1" in refused.stderr
    assert "Traceback" not in refused.stderr


# ============================================ 9. the run log, permissions, 1. init records
def test_the_run_log_exports_checkpoints_and_init_records(tmp_path):
    cnn_file, vit_file = tmp_path / "cnn.safetensors", tmp_path / "vit.safetensors"
    for name, file in (("resnet10t", cnn_file), ("vit_tiny_patch16_224", vit_file)):
        model = timm.create_model(name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    cfg = compose_app(
        tmp_path,
        [
            "debug=tiny",
            "print_config=false",
            "rich_progress_bar=false",
            "trainer.enable_progress_bar=true",
            "model.pretrained=true",
            "model.head_dim=16",
            f"model.cnn_weights_file={cnn_file}",
            f"model.vit_weights_file={vit_file}",
        ],
    )
    result = pretrain_app.pretrain(cfg)
    run = tmp_path / "run"
    log = (run / "pretrain.log").read_text()
    assert "precision 32-true" in log and "CASS pretraining finished" in log
    assert "\r" not in log and "it/s]" not in log  # the progress bar stays out
    # Exports, checkpoints and run files share one writer, hence one set of permission bits.
    exported = [p for p in run.glob("export/**/*") if p.is_file()]  # timm folders' files too
    files = [*exported, *run.glob("checkpoints/*.ckpt"), run / "run_info.json"]
    modes = {stat.S_IMODE(f.stat().st_mode) for f in files}
    umask = os.umask(0)
    os.umask(umask)
    assert len(files) >= 5 and modes == {0o666 & ~umask}
    # What each arm started from: in meta.json, summary.json and every checkpoint.
    meta = json.loads((run / "export" / "meta.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    for arm, file in (("cnn", cnn_file), ("vit", vit_file)):
        record = meta[arm]["init"]
        assert record["file"] == str(file) and record["init"] == "file"
        assert record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        assert summary["weights_init"][arm] == record == result["weights_init"][arm]
    assert "head.weight" in meta["vit"]["init"]["keys_adapted"]
    assert meta["vit"]["init"]["keys_adapted"]["pos_embed"].startswith("resampled")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["weights_init"]["cnn"] == meta["cnn"]["init"]


# ============================================================== 10. bf16 on a slow CPU
def test_bf16_on_a_cpu_without_native_bf16_warns_at_start(tmp_path, capsys, monkeypatch):
    from cass_lightning import runtime
    from cass_lightning.apps.run.speed import launch_settings

    monkeypatch.setattr(runtime, "read_cpu_flags", lambda: {"avx2", "fma"})
    cfg = compose_app(tmp_path, [*TINY_RUN, "trainer.precision=bf16-mixed"])
    launch_settings(cfg)
    err = capsys.readouterr().err
    assert "Warning: trainer.precision=bf16-mixed on a CPU without native bf16" in err
    monkeypatch.setattr(runtime, "read_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    launch_settings(cfg)
    assert "Warning" not in capsys.readouterr().err


def test_run_stopped_exit_codes():
    assert RunStopped(signal.SIGTERM, "x").exit_code == 143
    assert RunStopped(signal.SIGINT, "x").exit_code == 130
