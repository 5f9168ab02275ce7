"""The Hydra app: every experiment composes, the task runs, overrides and multirun work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from app_helpers import compose_app
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.modules.objective import Remedies

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_there_are_the_two_required_experiments():
    assert {"quickstart", "paper_reference"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(tmp_path, experiment):
    cfg = compose_app(tmp_path, [f"experiment={experiment}"])
    # Resolving every interpolation catches typos in group and key names.
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(task, resolve=True)
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    module = "modules.dino.DINOModule" if experiment.startswith("dino") else "CASSModule"
    assert cfg.model._target_ == f"cass_lightning.{module}"
    assert cfg.data.img_size == cfg.model.img_size


def test_paper_reference_is_the_papers_setting(tmp_path):
    cfg = compose_app(tmp_path, ["experiment=paper_reference"])
    m = cfg.model
    assert (m.cnn, m.vit, m.img_size, m.head, m.head_dim) == (
        "resnet50", "vit_base_patch16_384", 384, "logits", 1000,
    )  # fmt: skip
    assert (m.optimizer.name, m.optimizer.lr, m.optimizer.weight_decay) == ("adam", 1e-3, 0.0)
    assert (m.scheduler.name, m.scheduler.t_max, m.scheduler.eta_min) == ("cyclic_cosine", 16, 1e-6)
    # gradients zeroed every step (not the notebook-defect ablation), every remedy off
    assert m.pretrained is True and m._target_ == "cass_lightning.CASSModule"
    assert not Remedies.from_dict(OmegaConf.to_container(m.remedies)).any
    assert (cfg.data.batch_size, cfg.trainer.max_epochs, cfg.trainer.precision) == (
        16,
        100,
        "32-true",
    )
    assert cfg.seed == 77


def test_overrides_reach_the_objects(tmp_path):
    cfg = compose_app(
        tmp_path,
        [
            "experiment=quickstart",
            "data.batch_size=8",
            "trainer.max_epochs=5",
            "model/scheduler=warmup_cosine",
        ],
    )
    assert cfg.data.batch_size == 8 and cfg.trainer.max_epochs == 5
    assert cfg.model.scheduler.name == "warmup_cosine"


def test_fast_dev_run_of_the_task(tmp_path):
    cfg = compose_app(tmp_path, ["debug=tiny", "trainer.fast_dev_run=true", "print_config=false"])
    result = pretrain(cfg)
    assert result["metrics"]["train/loss"] >= 0.0
    assert result["run_dir"] == str(tmp_path / "run")


def test_tiny_run_writes_checkpoints_export_and_csv(tmp_path):
    cfg = compose_app(tmp_path, ["debug=tiny", "trainer.max_epochs=2", "print_config=true"])
    result = pretrain(cfg)
    run = tmp_path / "run"
    assert Path(result["last_checkpoint"]) == run / "checkpoints" / "last.ckpt"
    assert Path(result["best_checkpoint"]).is_file()
    meta = json.loads((run / "export" / "meta.json").read_text())
    assert meta["cnn"]["timm_name"] == "resnet10t" and meta["vit"]["img_size"] == 32
    assert (run / "export" / "cnn.safetensors").is_file()
    summary = json.loads((run / "summary.json").read_text())
    # One meaning of ``method`` in every file: the registry name; the label is for display.
    assert (summary["method"], summary["method_label"], meta["method"]) == ("cass", "CASS", "cass")
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in (
        "train/loss_step",
        "train/cosine_epoch",
        "train/cnn_std_epoch",
        "lr/cnn",
        "val/loss",
    ):
        assert column in header
    # The synthetic data was written under the data root as image files.
    assert list((tmp_path / "data").glob("synthetic-*/train/*/*.png"))
    # The run wrote its config itself once it held the folder, and let go of the folder after.
    assert cfg.hydra.output_subdir is None
    assert (
        "- debug=tiny\n- trainer.max_epochs=2\n" in (run / ".hydra" / "overrides.yaml").read_text()
    )
    assert not (run / ".run.lock").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    cfg = compose_app(tmp_path, ["debug=tiny", "print_config=false"])
    pretrain(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        pretrain(compose_app(tmp_path, ["debug=tiny", "print_config=false"]))
    assert last.read_bytes() == before


def test_offline_pretrained_fails_before_training(tmp_path, monkeypatch):
    from cass_lightning import encoders

    monkeypatch.setattr(encoders, "_hub_reachable", lambda timeout_s=3.0: False)
    cfg = compose_app(tmp_path, ["debug=tiny", "model.pretrained=true", "print_config=false"])
    with pytest.raises(Exception, match="weights_file"):
        pretrain(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def _run_app(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "CASS_DATA_ROOT": str(tmp_path / "data")}
    env["CASS_OUTPUT_ROOT"] = str(tmp_path / "runs")
    return subprocess.run(
        [sys.executable, "-m", "cass_lightning.apps.pretrain", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_multirun_of_two_jobs_makes_two_run_folders(tmp_path):
    proc = _run_app(
        [
            "-m",
            "debug=tiny",
            "data.batch_size=4,8",
            "print_config=false",
            "rich_progress_bar=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "runs" / "debug" / "multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0_data.batch_size=4,debug=tiny", "1_data.batch_size=8,debug=tiny"]
    for job in jobs:
        assert (sweeps[0] / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweeps[0] / job / "export" / "meta.json").is_file()
        saved = (sweeps[0] / job / ".hydra" / "overrides.yaml").read_text()
        assert f"data.batch_size={job.split(',')[0].split('=')[1]}" in saved


@pytest.mark.slow
def test_console_app_prints_where_everything_is(tmp_path):
    proc = _run_app(["debug=tiny", "print_config=false", "rich_progress_bar=false"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("run folder:", "last checkpoint:", "exported arms:"):
        assert label in proc.stdout


@pytest.mark.slow
def test_bad_override_fails_with_hydra_message(tmp_path):
    proc = _run_app(["debug=tiny", "model.head=mlp", "print_config=false"], tmp_path)
    assert proc.returncode != 0
    assert "head must be one of" in proc.stderr + proc.stdout


@pytest.mark.parametrize("sweep", ["batch_size_epochs", "smoke"])
def test_sweep_grids_compose(tmp_path, sweep):
    cfg = compose_app(tmp_path, [f"sweep={sweep}"])
    params = cfg.hydra.sweeper.params
    assert set(params) == {"data.batch_size", "trainer.max_epochs"}
    if sweep == "batch_size_epochs":
        assert params["data.batch_size"] == "8,16,32"
        assert params["trainer.max_epochs"] == "50,100,200,300"
