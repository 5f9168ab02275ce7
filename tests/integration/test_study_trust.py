"""Nothing from a folder is evaluated: saved overrides of a run (``resume=``) and the points of a
study's ``plan.json`` are plain settings or refused by name; a resume that changes the model's
shape is refused before anything is saved; one study, one writer."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from test_safety import _digest, _main, _run_folder

from app_helpers import app_env, compose_app
from cass_lightning.apps import pretrain as pretrain_app
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.run.resume import SHAPE_KEYS, ResumeError, resume_argv
from cass_lightning.apps.run.runfolder import LOCK_FILE, this_process
from cass_lightning.apps.study.app import refuse_orphans, settings_from
from cass_lightning.apps.study.plan import (
    FAILED_FILE,
    PLAN_FILE,
    RESULTS_FILE,
    STARTED_FILE,
    PlanRefused,
    build_plan,
    point_status,
    statuses_of,
    verified_plan,
    write_plan,
)
from cass_lightning.apps.study.points import (
    compose_point,
    parent_alive,
    parent_record,
    set_aside_failure,
)

#: The issue's reproduction: a resolver named through nested interpolations.
PWNED = [
    "debug=tiny",
    "task_name=oc.create",
    "logger.csv.name=oc.decode",
    "logger.csv.version=ge",
    "callbacks.images_per_second=\"${${task_name}:${${logger.csv.name}:'{_tar${logger.csv"
    ".version}t_: builtins.open, file: PWNED, mode: w}'}}\"",
]
SECRET = ["debug=tiny", "task_name=oc.env", 'logger.csv.version="${${task_name}:MY_SECRET_TOKEN}"']
#: A small study: one fraction, one seed, one mode.
STUDY = ["study=smoke", "study.seeds=[0]", "study.fractions=[1.0]", "study.methods=[cass,random]"]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------- resume=
def test_a_resolver_named_through_nested_interpolation_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path / "run", PWNED)
    before = _digest(run)
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and isinstance(exit_.code, str)  # sys.exit(message): status 1
    assert "callbacks.images_per_second=" in exit_.code and "interpolation" in exit_.code
    assert "resume_trust=true" in exit_.code
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))
    assert _digest(run) == before


def test_an_environment_variable_never_reaches_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MY_SECRET_TOKEN", "s3cr3t-0f-the-user")
    run = _run_folder(tmp_path / "run", SECRET)
    exit_ = _main(pretrain_app, [f"resume={run}"], monkeypatch)
    assert exit_ is not None and "logger.csv.version=" in str(exit_.code)
    for path in tmp_path.rglob("*"):
        assert "s3cr3t" not in path.name
        if path.is_file():
            assert b"s3cr3t" not in path.read_bytes(), path


def test_ordinary_saved_overrides_still_resume(tmp_path):
    # (data read from a root, not generated there: a synthetic root must be inside the run)
    saved = ["debug=tiny", "experiment=quickstart", "trainer.max_epochs=3", "logger=csv",
             "data=image_folder", "data.root='/data/a b,c=d'", "data.batch_size=4",
             "model/optimizer=adamw", "seed=7", "resume=null"]  # fmt: skip
    run = _run_folder(tmp_path / "run", saved)
    argv = resume_argv(["cass-pretrain", f"resume={run}", "trainer.max_epochs=5"])
    assert argv[1:9] == [o for o in saved if not o.startswith(("trainer", "resume"))]
    assert "trainer.max_epochs=5" in argv and f"hydra.run.dir='{run}'" in argv


def _shaped_run(tmp_path: Path) -> Path:
    """A stopped debug=tiny run whose last.ckpt records the model's settings, as Lightning does."""
    cfg = compose_app(tmp_path, ["debug=tiny"])
    hparams = {k: OmegaConf.select(cfg.model, k) for k in SHAPE_KEYS if k in cfg.model}
    run = _run_folder(tmp_path / "run", ["debug=tiny"])
    import torch

    torch.save({"state_dict": {}, "global_step": 3, "loops": {}, "optimizer_states": [],
                "hyper_parameters": hparams}, run / "checkpoints" / "last.ckpt")  # fmt: skip
    GlobalHydra.instance().clear()
    return run


def test_a_resume_that_changes_the_models_shape_is_refused_before_anything_is_saved(tmp_path):
    run = _shaped_run(tmp_path)
    before = _digest(run)
    with pytest.raises(ResumeError, match=r"model\.cnn=resnet18 \(the checkpoint has resnet10t\)"):
        resume_argv(["cass-pretrain", f"resume={run}", "model.cnn=resnet18"])
    with pytest.raises(ResumeError, match=r"model\.img_size=64 \(the checkpoint has 32\)"):
        resume_argv(["cass-pretrain", f"resume={run}", "model.img_size=64"])
    assert _digest(run) == before  # the printed resume command still works
    # settings that keep the shape resume as before
    argv = resume_argv(["cass-pretrain", f"resume={run}", "trainer.max_epochs=3", "seed=1"])
    assert "trainer.max_epochs=3" in argv


# ----------------------------------------------------------------------------- plan.json
def _planned(tmp_path: Path, *extra: str):
    cfg = compose_app(tmp_path, [*STUDY, *extra], config_name="study")
    study_dir = tmp_path / "study"
    settings = settings_from(cfg, [*STUDY, *extra], study_dir)
    points = build_plan(settings, study_dir)
    write_plan(study_dir, settings, points, statuses_of(points, study_dir))
    return study_dir, settings, points


def _edit_plan(study_dir: Path, edit) -> None:
    plan = json.loads((study_dir / PLAN_FILE).read_text())
    edit(plan)
    (study_dir / PLAN_FILE).write_text(json.dumps(plan))


def test_the_worker_runs_only_points_that_match_their_settings(tmp_path):
    study_dir, _, points = _planned(tmp_path)
    assert verified_plan(study_dir, CONFIG_DIR) == points
    hostile = "+callbacks.x._target_=builtins.open"

    def add_to_point(plan):
        plan["points"][0]["overrides"].append(hostile)

    _edit_plan(study_dir, add_to_point)
    with pytest.raises(PlanRefused, match=rf"study point {points[0].id} .* does not match"):
        verified_plan(study_dir, CONFIG_DIR)

    # settings, points and digests written together (a consistent plan): the override itself
    # is refused, by name
    _, settings, _ = _planned(tmp_path)
    tampered = dataclasses.replace(settings, common=[*settings.common, hostile])
    rebuilt = build_plan(tampered, study_dir)
    write_plan(study_dir, tampered, rebuilt, statuses_of(rebuilt, study_dir))
    with pytest.raises(PlanRefused, match=r"_target_=builtins\.open' names a Hydra _target_"):
        verified_plan(study_dir, CONFIG_DIR)


@pytest.mark.slow
def test_a_point_added_to_plan_json_is_refused_by_the_worker(tmp_path):
    study_dir = _planned(tmp_path)[0]
    marker = tmp_path / "PWNED"
    added = {**json.loads((study_dir / PLAN_FILE).read_text())["points"][-1]}
    added.update(id="finetune-evil-00000000", needs=None,
                 overrides=[*added["overrides"], "+callbacks.x._target_=builtins.open",
                            f"+callbacks.x.file={marker}", "+callbacks.x.mode=w"])  # fmt: skip
    _edit_plan(study_dir, lambda plan: plan["points"].append(added))
    proc = subprocess.run(
        [sys.executable, "-m", "cass_lightning.apps.study.points", "-m",
         f"study_dir={study_dir}", "point=finetune-evil-00000000"],
        env=app_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "study point finetune-evil-00000000" in proc.stderr
    assert not marker.exists() and not (study_dir / "points").exists()


def test_study_device_gpu_puts_every_point_on_the_gpu_and_the_documented_spellings_parse(
    tmp_path,
):
    precision = 'study.overrides.common=["trainer.precision=bf16-mixed"]'
    study_dir, settings, points = _planned(tmp_path, "study.device=gpu", precision)
    assert "trainer=cpu" not in settings.common and settings.common[-1] == "trainer=gpu"
    cpu = _planned(tmp_path)[2]
    assert {p.digest for p in points}.isdisjoint({p.digest for p in cpu})  # new points
    kinds = {(p.app, p.method): p for p in points}
    for point in kinds.values():
        composed = compose_point(point, point.folder(study_dir), [])
        assert composed.trainer.accelerator == "gpu", point.id
        assert composed.trainer.precision == "bf16-mixed", point.id
    assert {app for app, _ in kinds} == {"pretrain", "finetune"}


# ----------------------------------------------------------------------------- one writer
def test_a_second_study_on_one_folder_is_refused_and_the_first_untouched(tmp_path, capsys):
    from cass_lightning.apps.run.console import reported_errors
    from cass_lightning.apps.study.app import study

    cfg = compose_app(tmp_path, [*STUDY, f"study.dir={tmp_path / 'study'}"], config_name="study")
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {**this_process(), "pid": holder.pid, "start_ticks": None,
                "command": "cass-study study=smoke", "token": "first"}  # fmt: skip
        (study_dir / LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(SystemExit) as exit_, reported_errors():
            study(cfg, STUDY, [])
        assert exit_.value.code == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"process {holder.pid}" in lines[0], lines
        assert "in use by another cass-study" in lines[0]
        assert json.loads((study_dir / LOCK_FILE).read_text())["token"] == "first"
        assert sorted(p.name for p in study_dir.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_rerun_never_runs_beside_an_orphaned_live_worker(tmp_path):
    study_dir, _, points = _planned(tmp_path)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = points[0].folder(study_dir)
        folder.mkdir(parents=True)
        record = {**this_process(), "pid": orphan.pid, "start_ticks": None, "point": points[0].id}
        (folder / STARTED_FILE).write_text(json.dumps(record))
        with pytest.raises(RuntimeError, match=rf"{points[0].id} .* process {orphan.pid}"):
            refuse_orphans(points, study_dir)
    finally:
        orphan.kill()
        orphan.wait()
    refuse_orphans(points, study_dir)  # gone: the point is interrupted, the rerun goes on


def test_a_worker_knows_when_its_study_has_ended(tmp_path):
    assert parent_alive(None) and parent_alive(parent_record(os.getpid()))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    record = parent_record(ended.pid)
    assert parent_alive(record)
    ended.wait()
    assert not parent_alive(record)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="PR_SET_PDEATHSIG is a Linux call; elsewhere the worker relies on its parent check "
    "before each point (tested above)",
)
def test_kill_9_of_the_study_reaches_its_worker(tmp_path):
    """The worker asks Linux for SIGTERM when its parent dies (PR_SET_PDEATHSIG)."""
    ready = tmp_path / "ready"
    child = (
        "import os, signal, sys, time\n"
        "from cass_lightning.apps.study.points import die_with_parent, parent_record\n"
        "signal.signal(signal.SIGTERM, lambda *a: (open(sys.argv[2], 'w').write('TERM'), "
        "sys.exit(0)))\n"
        "die_with_parent(parent_record(os.getppid()))\n"
        "open(sys.argv[1], 'w').write('ready')\n"
        "time.sleep(60)\n"
    )
    parent = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]])\n"
        "time.sleep(60)\n"
    )
    got = tmp_path / "got"
    proc = subprocess.Popen([sys.executable, "-c", parent, child, str(ready), str(got)],
                            env=app_env(tmp_path))  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    while not got.exists():
        assert time.monotonic() < deadline, "the worker did not hear of its parent's death"
        time.sleep(0.05)
    assert got.read_text() == "TERM"


def test_a_finished_point_never_keeps_a_stale_failure_record(tmp_path):
    study_dir, _, points = _planned(tmp_path)
    point = next(p for p in points if p.app == "finetune")
    folder = point.folder(study_dir)
    folder.mkdir(parents=True)
    (folder / FAILED_FILE).write_text('{"error": "WorkerDied"}')
    (folder / RESULTS_FILE).write_text("{}")
    assert point_status(point, study_dir) == "done"
    moved = set_aside_failure(folder)
    assert moved == folder / "attempts" / "failed-1.json"
    assert not (folder / FAILED_FILE).exists() and "WorkerDied" in moved.read_text()
    (folder / FAILED_FILE).write_text("{}")
    assert set_aside_failure(folder).name == "failed-2.json"  # never over an earlier one
    assert set_aside_failure(folder) is None


def test_a_saved_key_the_app_does_not_have_is_refused_by_name(tmp_path):
    run = _run_folder(tmp_path / "run", ["debug=tiny", "trainer.no_such_switch=1"])
    before = _digest(run)
    with pytest.raises(ResumeError, match=r"does not compose.*trainer\.no_such_switch"):
        resume_argv(["cass-pretrain", f"resume={run}"])
    assert _digest(run) == before
    argv = resume_argv(["cass-pretrain", f"resume={run}", "resume_trust=true"])
    assert "trainer.no_such_switch=1" in argv  # trusted: Hydra decides, as for a typed line
