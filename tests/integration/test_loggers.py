"""Loggers: wandb never blocks (offline without a key or a server), a CSV log is always written,
every sweep job is its own finished wandb run, and the augmented-sample grid is right.

Nothing here reaches wandb's servers: the server is http://127.0.0.1:9 (nothing listens there)
or WANDB_MODE is set, and HOME, WANDB_DIR and wandb's other folders are inside tmp_path.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from PIL import Image

from app_helpers import compose_app
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.apps.run.loggers import (
    WandbLogger,
    build_loggers,
    choose_wandb_mode,
    has_wandb_credentials,
    host_reachable,
    logger_context,
    run_name_and_group,
)
from cass_lightning.callbacks import LogAugmentedSamples
from cass_lightning.maps import denormalize

wandb = pytest.importorskip("wandb")

DEAD_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
FAKE_KEY = "a" * 40  # the shape of a wandb API key; never sent anywhere


@pytest.fixture(autouse=True)
def _clean():
    yield
    GlobalHydra.instance().clear()
    if wandb.run is not None:  # a failed test must not leave its run open for the next one
        wandb.run.finish()


@pytest.fixture
def wandb_sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No WANDB_MODE, no API key, a dead server, and every wandb folder inside tmp_path."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "WANDB_MODE",
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "NETRC",
        "WANDB_INIT_TIMEOUT",
        "WANDB_FINISH_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", DEAD_SERVER)
    for name, sub in (
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_CACHE_DIR", "wandb_cache"),
        ("WANDB_CONFIG_DIR", "wandb_config"),
        ("WANDB_DATA_DIR", "wandb_data"),
        ("WANDB_ARTIFACT_DIR", "wandb_artifacts"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(name, str(tmp_path / sub))
    return home


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def wandb_records(run: Path) -> dict[str, list]:
    """The records of an offline run's ``run-<id>.wandb`` file, by kind (``run``, ``exit``...).

    The file is a LevelDB-style log (as wandb 0.31 writes it): a 7-byte header, then 32 KiB
    blocks of chunks, each a 7-byte header (crc32, length, type) and a piece of a protobuf
    ``Record``; type 1 is a whole record, 2/3/4 its first/middle/last piece.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    block, pos, pieces = 32768, 7, b""
    found: dict[str, list] = {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            kind_name = record.WhichOneof("record_type")
            found.setdefault(kind_name, []).append(getattr(record, kind_name))
    return found


def run_summary(run: Path, wait_s: float = 30.0) -> tuple[str, str, str, list[int]]:
    """(name, group, project, exit codes) of an offline run; no exit code: never finished.

    wandb 0.31's ``run.finish()`` can return before its writer has flushed the file, so this
    waits up to ``wait_s`` for the exit record to land.
    """
    deadline = time.monotonic() + wait_s
    records = wandb_records(run)
    while "exit" not in records and time.monotonic() < deadline:
        time.sleep(0.2)
        records = wandb_records(run)
    (info,) = records["run"]
    exits = [e.exit_code for e in records.get("exit", [])]
    return info.display_name, info.run_group, info.project, exits


# --------------------------------------------------------------------------- the whole app
@pytest.mark.timeout(120)  # the assertion is that it does not hang on the dead server
def test_no_key_and_dead_server_runs_offline_and_writes_csv(tmp_path, wandb_sandbox, capsys):
    cfg = compose_app(
        tmp_path,
        [
            "debug=tiny",
            "logger=wandb",
            "callbacks=media",
            "print_config=false",
            "rich_progress_bar=false",
            "trainer.enable_progress_bar=false",
        ],
    )
    result = pretrain(cfg)
    run = tmp_path / "run"
    assert result["run_dir"] == str(run)

    out = capsys.readouterr().out
    assert "wandb: logging offline" in out and f"no API key for {DEAD_SERVER}" in out
    assert f"wandb sync {run / 'wandb'}/offline-run-*" in out

    (offline,) = offline_runs(run)
    assert wandb.run is None, "the run must be finished when training ends"
    name, group, project, exits = run_summary(offline)
    assert (name, group, project) == ("callbacks=media,debug=tiny", "", "cass-lightning")
    assert exits == [0]  # finished, successfully
    records = wandb_records(offline)  # config: given at init (run record), then updates
    configs = [run.config for run in records["run"]] + records.get("config", [])
    config_keys = {item.key for config in configs for item in config.update}
    assert {"model", "data", "trainer", "paths", "seed"} <= config_keys
    # The grid went to wandb as an image, and to the run folder as a PNG.
    assert list((offline / "files" / "media" / "images").rglob("*.png"))
    assert (run / "samples" / "augmented.png").is_file()

    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "train/loss_step",
        "train/cosine_epoch",
        "train/cnn_std_epoch",
        "lr/cnn",
        "perf/images_per_s",
        "perf/epoch_s",
    ):
        assert column in header
    hparams = OmegaConf.load(run / "csv" / "hparams.yaml")
    assert hparams.model.cnn == "resnet10t" and hparams.trainer.max_epochs == 1  # full config


@pytest.mark.timeout(120)
def test_online_start_that_fails_falls_back_to_offline(
    tmp_path, wandb_sandbox, monkeypatch, capsys
):
    """WANDB_MODE=online with a key but a dead server: wandb.init times out, the run goes on."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = OmegaConf.create(
        {
            "wandb": {
                "_target_": "lightning.pytorch.loggers.WandbLogger",
                "save_dir": str(tmp_path),
                "project": "p",
                "init_timeout": 2,
                "log_model": True,
            }
        }
    )
    (csv, logger) = build_loggers(cfg, run_dir=tmp_path, run_name="n", hparams={"a": 1})
    assert isinstance(csv, CSVLogger) and isinstance(logger, WandbLogger)
    logger.log_metrics({"x": 1.0}, step=0)
    assert logger.experiment.settings.mode == "offline"
    assert logger.experiment.config["a"] == 1
    assert "online start failed" in capsys.readouterr().out
    assert logger._log_model is False  # artifacts cannot be uploaded offline
    logger.finalize("success")
    assert wandb.run is None and len(offline_runs(tmp_path)) == 1


def test_finalize_finishes_the_run_and_a_leftover_run_is_finished_first(
    tmp_path, wandb_sandbox, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create(
        {
            "wandb": {
                "_target_": "cass_lightning.apps.run.loggers.WandbLogger",
                "save_dir": str(tmp_path),
                "project": "p",
            }
        }
    )
    first = build_loggers(cfg, run_dir=tmp_path, run_name="first")[1]
    run_id = first.experiment.id
    first.finalize("success")
    assert wandb.run is None and first.version == run_id

    leftover = wandb.init(dir=str(tmp_path), project="p", name="leftover", mode="offline")
    second = build_loggers(cfg, run_dir=tmp_path, run_name="second")[1]
    assert second.experiment.id != leftover.id and second.experiment.name == "second"
    second.finalize("failed")
    assert wandb.run is None
    summaries = sorted(run_summary(run) for run in offline_runs(tmp_path))
    assert [(name, exits) for name, _, _, exits in summaries] == [
        ("first", [0]),
        ("leftover", [0]),
        ("second", [1]),  # finalize("failed")
    ]


# --------------------------------------------------------------------------- the mode decision
def _never(*_: object) -> bool:
    raise AssertionError("must not be consulted")


@pytest.mark.parametrize(
    ("env_mode", "offline", "key", "reachable", "expected", "reason"),
    [
        ("disabled", False, _never, _never, "disabled", "WANDB_MODE=disabled"),
        ("online", True, _never, _never, "online", "WANDB_MODE=online"),
        (None, True, _never, _never, "offline", "offline: true"),
        (None, False, lambda host: False, _never, "offline", "no API key"),
        (None, False, lambda host: True, lambda host, t: False, "offline", "did not accept"),
        (None, False, lambda host: True, lambda host, t: True, "online", "reachable"),
    ],
    ids=[
        "env-disabled",
        "env-wins-over-config",
        "config-offline",
        "no-key",
        "unreachable",
        "key-and-reachable",
    ],
)
def test_mode_choice(monkeypatch, env_mode, offline, key, reachable, expected, reason):
    if env_mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    mode, why = choose_wandb_mode(
        offline=offline, host="https://api.wandb.ai", has_credentials=key, probe=reachable
    )
    assert mode == expected and reason in why


def test_the_probe_asks_the_configured_host(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org/")
    asked: list[tuple[str, float]] = []
    mode, _ = choose_wandb_mode(
        has_credentials=lambda host: True,
        probe=lambda host, timeout: asked.append((host, timeout)) or True,
    )
    assert mode == "online" and asked == [("https://wandb.example.org", 2.5)]


def test_credentials_come_from_the_env_or_netrc(wandb_sandbox, monkeypatch):
    host = "https://api.wandb.ai"
    assert not has_wandb_credentials(host)
    netrc_file = wandb_sandbox / ".netrc"
    netrc_file.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc_file.chmod(0o600)
    assert has_wandb_credentials(host)
    assert not has_wandb_credentials("https://wandb.example.org")  # an entry for another host
    netrc_file.unlink()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert has_wandb_credentials(host)


def test_reachability_probe_on_local_ports():
    assert not host_reachable(DEAD_SERVER, timeout_s=2.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert host_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout_s=2.0)


def test_no_logger_stays_none_and_csv_is_not_doubled(tmp_path, wandb_sandbox, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert build_loggers(OmegaConf.create({}), run_dir=tmp_path, run_name="n") == []
    csv_only = OmegaConf.create(
        {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path)}}
    )
    assert len(build_loggers(csv_only, run_dir=tmp_path, run_name="n")) == 1


# --------------------------------------------------------------------------- names and groups
@pytest.mark.parametrize(
    ("mode", "overrides", "expected"),
    [
        (None, "", ("pretrain", None)),
        (RunMode.RUN, "data.batch_size=8", ("data.batch_size=8", None)),
        (
            RunMode.MULTIRUN,
            "data.batch_size=8,debug=tiny",
            ("data.batch_size=8,debug=tiny", "2024-05-01_12-00-00"),
        ),
        (RunMode.MULTIRUN, "", ("pretrain-3", "2024-05-01_12-00-00")),
    ],
)
def test_run_name_and_group(mode, overrides, expected):
    assert (
        run_name_and_group(
            task_name="pretrain",
            mode=mode,
            override_dirname=overrides,
            sweep_dir="runs/pretrain/multirun/2024-05-01_12-00-00",
            job_num=3,
        )
        == expected
    )


def test_logger_context_reads_hydras_runtime(tmp_path):
    cfg = compose_app(tmp_path, ["debug=tiny", "data.batch_size=4"], sweep_dir=tmp_path / "sweep-a")
    context = logger_context(cfg)
    assert context["run_name"] == "data.batch_size=4,debug=tiny"
    assert context["sweep_group"] == "sweep-a"
    assert context["run_dir"] == tmp_path / "run"
    assert "hydra" not in context["hparams"]
    assert context["hparams"]["paths"]["output_dir"] == str(tmp_path / "run")  # resolved


@pytest.mark.slow
def test_multirun_jobs_are_separate_finished_wandb_runs(tmp_path, wandb_sandbox):
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "CASS_DATA_ROOT": str(tmp_path / "data"),
        "CASS_OUTPUT_ROOT": str(tmp_path / "runs"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cass_lightning.apps.pretrain",
            "-m",
            "debug=tiny",
            "logger=wandb",
            "data.batch_size=4,8",
            "print_config=false",
            "rich_progress_bar=false",
            "trainer.enable_progress_bar=false",
            "hydra.sweep.dir=" + str(tmp_path / "sweep-x"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep-x").iterdir() if p.is_dir())
    assert [j.name for j in jobs] == [
        "0_data.batch_size=4,debug=tiny",
        "1_data.batch_size=8,debug=tiny",
    ]
    run_ids = set()
    for job in jobs:
        (offline,) = offline_runs(job)  # each job its own run, in its own folder
        run_ids.add(offline.name.rsplit("-", 1)[-1])
        name, group, _, exits = run_summary(offline)
        assert name == job.name.split("_", 1)[1]  # the job's overrides
        assert group == "sweep-x"  # the sweep folder
        assert exits == [0]  # finished before the next job started its own run
        assert (job / "csv" / "metrics.csv").is_file()
    assert len(run_ids) == 2


# --------------------------------------------------------------------------- sample grid
def test_denormalize_inverts_normalize():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.rand(2, 3, 5, 5)
    normalized = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(denormalize(normalized, mean, std), pixels, atol=1e-6)
    assert denormalize(torch.full((1, 3, 1, 1), 100.0), mean, std).max() == 1.0  # clamped


def test_augmented_grid_png_has_the_expected_size_and_pixels(tmp_path):
    """Five images over two batches of three, 4 per row, the datamodule's normalisation."""
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    value = torch.tensor([0.8, 0.2, 0.6]).view(1, 3, 1, 1)  # a known colour
    batch = (value - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    batch = batch.expand(3, 3, 16, 16)
    trainer = SimpleNamespace(
        is_global_zero=True,
        global_step=0,
        loggers=[],
        default_root_dir=str(tmp_path),
        datamodule=SimpleNamespace(mean=mean, std=std),
    )
    callback = LogAugmentedSamples(num_images=5, nrow=4)
    callback.on_train_start(trainer, None)
    callback.on_train_batch_start(trainer, None, (batch, torch.zeros(3)), 0)
    assert callback.saved_to is None  # three of five so far
    callback.on_train_batch_start(trainer, None, (batch, torch.zeros(3)), 1)
    callback.on_train_batch_start(trainer, None, (batch, torch.zeros(3)), 2)  # already done

    assert callback.saved_to == tmp_path / "samples" / "augmented.png"
    image = Image.open(callback.saved_to)
    pad = 2
    assert image.size == (4 * (16 + pad) + pad, 2 * (16 + pad) + pad)  # (W, H): 4 + 1 images
    assert image.getpixel((pad + 3, pad + 3)) == (204, 51, 153)  # 0.8, 0.2, 0.6 of 255


def test_media_callbacks_config_adds_the_grid_to_the_defaults(tmp_path):
    cfg = compose_app(tmp_path, ["callbacks=media"])
    assert {
        "model_checkpoint",
        "export_backbones",
        "images_per_second",
        "log_augmented_samples",
    } <= set(cfg.callbacks)
    assert cfg.callbacks.log_augmented_samples.dirpath == str(tmp_path / "run" / "samples")


def test_tensorboard_gets_the_grid(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    from lightning.pytorch.loggers import TensorBoardLogger

    tensorboard = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="")
    trainer = SimpleNamespace(
        is_global_zero=True,
        global_step=0,
        loggers=[CSVLogger(save_dir=str(tmp_path)), tensorboard],
        default_root_dir=str(tmp_path),
        datamodule=None,
    )
    callback = LogAugmentedSamples(num_images=2, mean=(0.5,), std=(0.5,))
    callback.on_train_start(trainer, None)
    callback.on_train_batch_start(trainer, None, torch.zeros(2, 1, 8, 8), 0)
    tensorboard.experiment.flush()

    events = event_accumulator.EventAccumulator(tensorboard.log_dir)
    events.Reload()
    assert events.Tags()["images"] == ["samples/augmented"]
    assert (tmp_path / "samples" / "augmented.png").is_file()


# --------------------------------------------------------------------------- perf metrics
def test_images_per_second_logs_peak_gpu_memory_per_epoch_on_cuda(monkeypatch):
    """The CUDA branch without a GPU: the counter is reset at epoch start and read at the end."""
    from cass_lightning.callbacks import ImagesPerSecond

    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**29)
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        device=torch.device("cuda", 0), log_dict=lambda m, **kw: logged.update(m)
    )
    callback = ImagesPerSecond()
    callback.on_train_epoch_start(None, module)
    callback.on_train_batch_end(None, module, None, torch.zeros(4, 3, 8, 8), 0)
    callback.on_train_epoch_end(None, module)
    assert calls == ["reset"]
    assert logged["perf/gpu_mem_peak_gib"] == 1.5
    assert logged["perf/images_per_s"] > 0 and logged["perf/epoch_s"] > 0

    logged.clear()
    cpu = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda m, **kw: logged.update(m))
    callback.on_train_epoch_start(None, cpu)
    callback.on_train_epoch_end(None, cpu)
    assert set(logged) == {"perf/images_per_s", "perf/epoch_s"}


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_gpu_run_logs_peak_memory_and_samples(tmp_path, wandb_sandbox):
    cfg = compose_app(
        tmp_path,
        [
            "debug=tiny",
            "logger=wandb",
            "callbacks=media",
            "trainer.accelerator=gpu",
            "print_config=false",
            "rich_progress_bar=false",
            "trainer.enable_progress_bar=false",
        ],
    )
    pretrain(cfg)
    run = tmp_path / "run"
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "perf/gpu_mem_peak_gib" in header
    assert (run / "samples" / "augmented.png").is_file()
    (offline,) = offline_runs(run)
    assert run_summary(offline)[3] == [0]
