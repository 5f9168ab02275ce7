"""cass-study end to end: plan, kill in the middle of a point, resume, report, nothing twice."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from app_helpers import app_env, compose_app
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.study.app import launcher_overrides, settings_from
from cass_lightning.apps.study.plan import (
    FAILED_FILE,
    build_plan,
    read_plan,
    statuses_of,
    write_plan,
)
from cass_lightning.apps.study.points import compose_point
from cass_lightning.machine import machine_record
from data_fixtures import image, snapshot

#: study=smoke, smaller: one label fraction, two seeds, short runs; last.ckpt every 2 steps so
#: a kill lands after a checkpoint and in the middle of CASS's pretraining.
STUDY = [
    "study=smoke", "study.seeds=[0,1]", "study.fractions=[1.0]", "study.pretrain.epochs=3",
    "study.encoders.img_size=32",
    'study.overrides.data=["data.images_per_class=16","data.val_images_per_class=4",'
    '"data.image_size=32","data.num_workers=0"]',
    'study.overrides.pretrain=["rich_progress_bar=false",'
    '"callbacks.last_checkpoint.every_n_train_steps=2"]',
    'study.overrides.finetune=["trainer.max_epochs=1","early_stopping.patience=1"]',
]  # fmt: skip
ROWS = {(m, a) for m in ("cass", "dino", "random") for a in ("cnn", "vit")}


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def _study(tmp_path: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cass_lightning.apps.study", *STUDY, *extra],
        env=app_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _start(tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cass_lightning.apps.study", *STUDY], env=app_env(tmp_path),
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def _wait_for(proc: subprocess.Popen, ready) -> None:
    deadline = time.monotonic() + 600
    while not ready():
        assert proc.poll() is None, "the study ended before the moment to interrupt it"
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _statuses_now(tmp_path: Path, study: Path) -> dict[str, str]:
    """What ``study.plan_only=true`` prints, read in this process (the plan of ``plan.json``)."""
    points = read_plan(study)
    return statuses_of(points, study)


def _statuses(tmp_path: Path) -> dict[str, str]:
    proc = _study(tmp_path, "study.plan_only=true", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line[:1].islower()]
    return {row[1]: row[0] for row in rows if len(row) == 2 and row[0] != "status"}


@pytest.mark.slow
def test_smoke_study_survives_a_kill_and_reports_every_row(tmp_path):
    study = tmp_path / "runs" / "study" / "smoke-synthetic"
    before = _statuses(tmp_path)
    assert len(before) == 3 + len(ROWS) * 2  # CASS, DINO x 2 arms; 6 rows x 2 seeds
    assert {s for p, s in before.items() if p.startswith("pretrain")} == {"pending"}
    assert {s for p, s in before.items() if p.startswith("finetune-random")} == {"pending"}
    assert {s for p, s in before.items() if p.startswith(("finetune-cass", "finetune-dino"))} == {
        "blocked"
    }

    # SIGTERM to the study once CASS has written a checkpoint: it saves and stops (143).
    proc = _start(tmp_path)
    _wait_for(proc, lambda: list(study.glob("points/pretrain-cass-*/checkpoints/last.ckpt")))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143
    during = _statuses_now(tmp_path, study)
    cass = next(p for p in during if p.startswith("pretrain-cass"))
    assert during[cass] == "partial"  # stopped with its last.ckpt: it resumes from there
    assert sum(s == "done" for s in during.values()) == 0

    # SIGKILL to everything once fine-tuning runs: that point's attempt is lost, not the rest.
    proc = _start(tmp_path)
    _wait_for(proc, lambda: list(study.glob("points/finetune-*/started.json")))
    killed = next(study.glob("points/finetune-*/started.json")).parent.name
    worker = json.loads((study / "points" / killed / "started.json").read_text())["pid"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60  # the worker, now init's child, takes a moment to go
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    during = _statuses_now(tmp_path, study)
    assert during[killed] == "interrupted"
    assert {s for p, s in during.items() if p.startswith("pretrain")} == {"done"}

    done = _study(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "outside the training and evaluation loops" in done.stdout
    after = _statuses(tmp_path)
    assert after.keys() == before.keys() and set(after.values()) == {"done"}

    # No point ran twice: one folder per point, plus the killed attempt kept aside; CASS
    # resumed once, in place, and ran exactly its planned steps.
    kept = sorted(p.name for p in (study / "points").iterdir())
    assert kept == sorted([*before, f"{killed}.interrupted-1"])
    starts = json.loads((study / "points" / cass / "run_info.json").read_text())["starts"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("last.ckpt")
    summary = json.loads((study / "points" / cass / "summary.json").read_text())
    assert summary["steps"] == 3 * (6 * 16 // 16)  # every planned step, none twice
    for dino in (p for p in after if p.startswith("pretrain-dino")):
        info = json.loads((study / "points" / dino / "run_info.json").read_text())
        assert len(info["starts"]) == 1

    # The report: every row of the table with two seeds, and the missing ImageNet rows explained.
    with (study / "report" / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    measured = {(r["method"], r["arm"]) for r in rows if r["n"] == "2"}
    assert measured == ROWS
    imagenet = [r for r in rows if r["method"] == "imagenet"]
    assert {r["arm"] for r in imagenet} == {"cnn", "vit"}
    assert all("no ImageNet weights file" in r["note"] for r in imagenet)
    text = (study / "report" / "study.md").read_text()
    assert "CASS-CNN vs DINO-CNN" in text and "2 paired seeds" in text
    here = machine_record("32-true", "cpu", 1, 1)["device"]  # the report names its machine
    assert f"- **{here}**: pretraining of CASS (both arms), DINO-CNN, DINO-ViT;" in text
    plan = json.loads((study / "plan.json").read_text())
    assert plan["last_invocation"]["overhead_seconds"] >= 0
    assert {p["status"] for p in plan["points"]} == {"done"}

    # The same command again: nothing to run, the report is kept and a new one is written beside.
    again = _study(tmp_path)
    assert again.returncode == 0
    assert (study / "report-2" / "study.md").is_file()
    assert json.loads((study / "points" / cass / "summary.json").read_text()) == summary


def test_study_settings_refuse_one_weights_file_and_forward_the_data(tmp_path):
    cfg = compose_app(tmp_path, ["study=paper", "data.batch_size=8"], config_name="study")
    task = ["study=paper", "data=synthetic", "data.root=/x", "+data.foo=1", "study.seeds=[0]"]
    settings = settings_from(cfg, task, tmp_path / "study")
    assert settings.data[:3] == ["data=synthetic", "data.root=/x", "+data.foo=1"]
    assert settings.data[-1].startswith("data.cache_dir=")  # one decoded cache for every point
    assert settings.cass == ["experiment=paper_reference"] and settings.pretrain_epochs == 100
    weights = tmp_path / "cnn.safetensors"
    weights.write_bytes(b"")
    one = compose_app(tmp_path, ["study=paper", f"study.weights.cnn={weights}"],
                      config_name="study")  # fmt: skip
    with pytest.raises(ValueError, match=r"both study\.weights\.cnn and study\.weights\.vit"):
        settings_from(one, [], tmp_path / "study")
    vit = f"study.weights.vit={tmp_path / 'gone'}"
    gone = compose_app(tmp_path, ["study=paper", f"study.weights.cnn={weights}", vit],
                       config_name="study")  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"study\.weights\.vit"):
        settings_from(gone, [], tmp_path / "study")
    scaled = compose_app(tmp_path, ["study=robustness", "study.epoch_scale=0.1"],
                         config_name="study")  # fmt: skip
    grid = settings_from(scaled, [], tmp_path / "study").grid
    assert grid == [(b, e) for b in (8, 16, 32) for e in (5, 10, 20, 30)]


def test_the_launcher_choice_goes_to_the_workers(tmp_path):
    typed = ["study=paper", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
             "hydra.run.dir=x", "data.root=/d"]  # fmt: skip
    assert launcher_overrides(typed) == ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
    # the worker's config takes them: each point becomes a SLURM job (submitit)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("study_points", ["study_dir=/s", "point=a", *launcher_overrides(typed)],
                      return_hydra_config=True)  # fmt: skip
    from hydra.utils import get_class

    launcher = get_class(cfg.hydra.launcher._target_)  # ours: submitit's, saying what it does
    # by name: Hydra's plugin scan executes plugin modules again, making new class objects
    bases = {f"{c.__module__}.{c.__qualname__}" for c in launcher.__mro__}
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in bases
    assert cfg.hydra.launcher.partition == "gpu"


@pytest.mark.parametrize("kind", ["paper", "robustness"])
def test_every_kind_of_point_composes_into_its_app(tmp_path, kind):
    """The plan's overrides, with the paper's experiments, compose into the real app configs:
    CASS as paper_reference, DINO as dino_reference on each arm, and every fine-tuning row."""
    weights = {arm: tmp_path / f"{arm}.safetensors" for arm in ("cnn", "vit")}
    for file in weights.values():
        file.write_bytes(b"")
    given = [f"study.weights.{arm}={file}" for arm, file in weights.items()]
    cfg = compose_app(tmp_path, [f"study={kind}", *given], config_name="study")
    study_dir = tmp_path / "study"
    points = build_plan(settings_from(cfg, [], study_dir), study_dir)
    kinds = {}
    for p in points:
        kinds.setdefault((p.app, p.method, p.arm), p)
    for (app, method, arm), point in kinds.items():
        composed = compose_point(point, point.folder(study_dir), [])
        model = composed.model
        if app == "pretrain":
            assert (model.cnn, model.vit, model.img_size) == (
                "resnet50",
                "vit_base_patch16_384",
                384,
            )
            assert model.pretrained is True and model.cnn_weights_file == str(weights["cnn"])
            assert composed.trainer.max_epochs == point.info["epochs"]
            assert composed.data.batch_size == point.info["batch_size"]
            assert model._target_.endswith("DINOModule" if method == "dino" else "CASSModule")
            if method == "dino":
                assert model.arm == arm and composed.lr_scaling.base_batch_size == 256
        else:
            assert composed.arm == arm and composed.data.label_fraction == point.info["fraction"]
            assert composed.seed == point.info["seed"]
            if method == "imagenet":
                assert composed.weights == "imagenet"
                assert composed.model.weights_file == str(weights[arm])
    assert {m for _, m, _ in kinds} == ({"cass", "dino"} if kind == "robustness" else
                                        {"cass", "dino", "imagenet", "random"})  # fmt: skip


def test_an_override_no_app_accepts_stops_the_study_before_anything_is_written(tmp_path):
    from cass_lightning.apps.study.app import study

    bad = 'study.overrides.finetune=["trainer.max_epochs=1","trainer.no_such_switch=false"]'
    cfg = compose_app(tmp_path, [*STUDY, bad], config_name="study")
    with pytest.raises(ValueError, match=r"finetune-cass-cnn-100pct-s0-\w+ \(finetune\) does "
                                         r"not compose.*trainer\.no_such_switch"):  # fmt: skip
        study(cfg, [*STUDY, bad], [])
    assert not Path(str(cfg.study.dir)).exists()  # no plan, no point folder, no data check


@pytest.mark.slow
def test_a_dataset_that_fails_the_check_stops_the_study_before_any_training(tmp_path):
    root = tmp_path / "mine"
    for split in ("train", "val"):
        for cls in ("benign", "malignant"):
            for i in range(4):
                image(root / split / cls / f"{cls}_{i}.png", size=(20, 16), seed=i)
    (root / "train" / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n not an image")
    before = snapshot(root)
    proc = _study(tmp_path, "data=image_folder", f"data.root={root}",
                  'study.overrides.data=["data.num_workers=0"]', timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "the study's data did not pass the check" in proc.stderr
    study = tmp_path / "runs" / "study" / "smoke-image_folder"
    (check,) = study.glob("data-check-*")
    report = json.loads((check / "data_report.json").read_text())
    assert report["problems"] and "unreadable" in report["problems"][0]
    assert [Path(bad["file"]).name for bad in report["bad_files"]] == ["broken.png"]
    assert not list(study.glob("points/*/started.json"))  # no point began
    assert snapshot(root) == before


def test_one_worker_takes_both_stages_and_skips_what_waits_on_a_failed_pretraining(tmp_path):
    from cass_lightning.apps.study.app import _todo

    cfg = compose_app(tmp_path, STUDY, config_name="study")
    study_dir = tmp_path / "study"
    settings = settings_from(cfg, STUDY, study_dir)
    points = build_plan(settings, study_dir)
    write_plan(study_dir, settings, points, statuses_of(points, study_dir))
    # nothing done: the worker gets every point, pretraining first, then what waits on it
    todo = _todo(points, study_dir, (0, 1))
    assert [p.id for p in todo] == [p.id for p in sorted(points, key=lambda p: p.stage)]
    # CASS's pretraining failed in this invocation: it is not retried now, nor are its rows
    cass = next(p for p in points if p.app == "pretrain" and p.method == "cass")
    cass.folder(study_dir).mkdir(parents=True)
    (cass.folder(study_dir) / FAILED_FILE).write_text("{}")
    left = {p.id for p in _todo(points, study_dir, (0, 1))}
    assert cass.id not in left and not any(p.needs == cass.id for p in points if p.id in left)
    assert {p.method for p in points if p.id in left} == {"dino", "random"}
    # a fine-tuning point run when its pretraining did not finish is skipped, nothing written
    waiting = next(p for p in points if p.needs == cass.id)
    proc = subprocess.run(
        [sys.executable, "-m", "cass_lightning.apps.study.points", f"study_dir={study_dir}",
         f"point={waiting.id}"], env=app_env(tmp_path), cwd=tmp_path, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{waiting.id} skipped: its pretraining {cass.id} did not finish" in proc.stderr
    assert not waiting.folder(study_dir).exists()
