"""``cass-study ... study.logger=wandb``: every point one run of one project, grouped by the
study, with its job type and flat config; the report as one more run with its tables and
artifact. Offline only: read back from the ``offline-run-*`` folders under ``<study>/wandb``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from test_loggers import wandb_records, wandb_sandbox  # noqa: F401 (a fixture)

from app_helpers import app_env, compose_app
from cass_lightning.apps.study.app import settings_from
from cass_lightning.apps.study.plan import build_plan
from cass_lightning.apps.study.points import compose_point

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


#: Two points and the report: CASS pretrained for one epoch, its CNN fine-tuned once.
STUDY = [
    "study=smoke", "study.methods=[cass]", "study.arms=[cnn]", "study.seeds=[0]",
    "study.fractions=[1.0]", "study.pretrain.epochs=1", "study.encoders.img_size=32",
    'study.overrides.data=["data.images_per_class=8","data.val_images_per_class=4",'
    '"data.image_size=32","data.num_workers=0"]',
    'study.overrides.finetune=["trainer.max_epochs=1","early_stopping.patience=1"]',
    "study.logger=wandb", "study.wandb.project=my-study",
]  # fmt: skip


def _runs(study: Path) -> dict[str, dict]:
    """Each offline run's run record, config and history keys, by job type."""
    runs = {}
    for folder in sorted((study / "wandb").glob("offline-run-*")):
        records = wandb_records(folder)
        (run,) = records["run"]
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        logged = {item.key or item.nested_key[0]
                  for history in records.get("history", []) for item in history.item}  # fmt: skip
        artifacts = [(a.name, a.type) for a in records.get("artifact", [])]
        runs[run.job_type] = {"run": run, "config": config, "logged": logged,
                              "artifacts": artifacts, "folder": folder}  # fmt: skip
    return runs


@pytest.mark.slow
@pytest.mark.usefixtures("wandb_sandbox")  # no key, a dead server, wandb's folders in tmp_path
def test_a_study_logged_to_wandb_is_one_group_of_runs_and_a_report_run(tmp_path):
    env = app_env(tmp_path, WANDB_MODE="offline")
    proc = subprocess.run(
        [sys.executable, "-m", "cass_lightning.apps.study", *STUDY], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    study = tmp_path / "runs" / "study" / "smoke-synthetic"
    plan = json.loads((study / "plan.json").read_text())
    ids = {p["app"]: p["id"] for p in plan["points"]}
    runs = _runs(study)
    assert set(runs) == {"pretrain", "finetune", "report"}
    # one run per point: a fine-tuning run's test phase resumes its run id in a second folder
    # (offline-run-<date>_<time>-<run id>, with "-<n>" added when that name was taken already)
    ids_by_folder = {f.name.split("-")[3] for f in (study / "wandb").glob("offline-run-*")}
    assert ids_by_folder == {found["run"].run_id for found in runs.values()}
    for job_type, found in runs.items():
        run = found["run"]
        assert (run.project, run.run_group) == ("my-study", "smoke-synthetic")
        if job_type != "report":
            assert run.display_name == ids[job_type]
    pretrain, finetune = runs["pretrain"]["config"], runs["finetune"]["config"]
    assert {k: pretrain[k] for k in ("method", "arm", "seed", "dataset", "epochs")} == {
        "method": "cass", "arm": "both", "seed": 77, "dataset": "synthetic", "epochs": 1,
    }  # fmt: skip
    assert {k: finetune[k] for k in ("method", "arm", "fraction", "seed", "mode", "dataset")} == {
        "method": "cass", "arm": "cnn", "fraction": 1.0, "seed": 0, "mode": "finetune",
        "dataset": "synthetic",
    }  # fmt: skip
    report = runs["report"]
    pngs = {f"report/{png.stem}" for png in (study / "report").glob("*.png")}
    assert pngs and {"report/table", "report/verdicts", *pngs} <= report["logged"]
    assert ("smoke-synthetic-report", "study-report") in report["artifacts"]
    (table,) = (report["folder"] / "files" / "media" / "table" / "report").glob("table_*.json")
    logged = json.loads(table.read_text())
    rows = [dict(zip(logged["columns"], row, strict=True)) for row in logged["data"]]
    assert [(r["method"], r["arm"]) for r in rows if r["mean"] is not None] == [("cass", "cnn")]
    # the points' own folders hold no wandb runs: one `wandb sync <study>/wandb` takes them all
    assert not list((study / "points").glob("*/wandb"))
    assert f"wandb sync {study / 'wandb'}/offline-run-*" in proc.stdout


def test_wandb_is_composed_with_every_point_outside_its_digest(tmp_path):
    """The same points with and without wandb (a finished study is not rerun to log it), each
    composed with its wandb identity; an unknown study.logger is refused by name."""
    study_dir = tmp_path / "my study"
    plain = settings_from(compose_app(tmp_path, STUDY[:-2], config_name="study"), [], study_dir)
    logged = settings_from(compose_app(tmp_path, STUDY, config_name="study"), [], study_dir)
    points = build_plan(logged, study_dir)
    assert [p.id for p in points] == [p.id for p in build_plan(plain, study_dir)]
    assert not any(p.logging for p in build_plan(plain, study_dir))
    for point in points:
        wandb = compose_point(point, point.folder(study_dir), []).logger.wandb
        assert (wandb.project, wandb.group, wandb.name) == ("my-study", "my study", point.id)
        assert wandb.job_type == point.app and wandb.save_dir == str(study_dir)
        assert wandb.config.method == point.method and wandb.config.arm == point.arm
    bad = compose_app(tmp_path, [*STUDY[:-2], "study.logger=tensorbord"], config_name="study")
    with pytest.raises(ValueError, match=r"study\.logger=tensorbord"):
        build_plan(settings_from(bad, [], study_dir), study_dir)


@pytest.mark.usefixtures("wandb_sandbox")
def test_a_report_whose_online_start_fails_goes_offline(tmp_path, monkeypatch, capsys):
    import wandb

    from cass_lightning.apps.run import loggers
    from cass_lightning.apps.study.report import upload_report

    study_dir = tmp_path / "paper-isic"
    out = study_dir / "report"
    out.mkdir(parents=True)
    (out / "report.csv").write_text("method,arm,mean\ncass,cnn,0.5\nrandom,cnn,\n")
    (out / "verdicts.csv").write_text("arm,verdict\ncnn,no difference resolved\n")
    settings = settings_from(compose_app(tmp_path, STUDY, config_name="study"), [], study_dir)
    real_init, modes = wandb.init, []

    def init(mode: str, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.CommError("server said no")
        return real_init(mode=mode, **kwargs)

    monkeypatch.setattr(loggers, "choose_wandb_mode", lambda: ("online", "key found"))
    monkeypatch.setattr(wandb, "init", init)
    upload_report(out, settings, study_dir)
    assert modes == ["online", "offline"]
    assert (
        "online start failed (server said no); the report goes offline" in capsys.readouterr().out
    )
    (run_dir,) = (study_dir / "wandb").glob("offline-run-*")
    (table,) = (run_dir / "files" / "media" / "table" / "report").glob("table_*.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == ["method", "arm", "mean"]
    assert logged["data"] == [["cass", "cnn", 0.5], ["random", "cnn", None]]
