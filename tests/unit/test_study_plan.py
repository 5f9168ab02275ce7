"""The study's plan: which points, their ids and digests, statuses read from the folders."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest

from cass_lightning.apps.study.plan import (
    FAILED_FILE,
    STARTED_FILE,
    StudySettings,
    build_plan,
    missing_rows,
    read_plan,
    statuses_of,
    write_plan,
)

SETTINGS = StudySettings(
    kind="paper", encoders={"cnn": "resnet10t", "vit": "vit_tiny_patch16_224", "img_size": 32},
    weights={"cnn": None, "vit": None}, methods=["cass", "dino", "imagenet", "random"],
    arms=["cnn", "vit"], fractions=[0.01, 0.1, 1.0], seeds=[0, 1], modes=["finetune"],
    pretrain_epochs=3, pretrain_batch_size=16, pretrain_seed=77, data=["data=synthetic"],
)  # fmt: skip


def test_paper_plan_has_every_row_at_every_fraction_and_seed(tmp_path):
    points = build_plan(SETTINGS, tmp_path)
    pretraining = [p for p in points if p.app == "pretrain"]
    assert [(p.method, p.arm) for p in pretraining] == [
        ("cass", "both"), ("dino", "cnn"), ("dino", "vit"),
    ]  # fmt: skip
    tuned = [p for p in points if p.app == "finetune"]
    rows = {(p.method, p.arm) for p in tuned}
    # no ImageNet weights given: no imagenet points, a missing row with the reason instead
    assert rows == {(m, a) for m in ("cass", "dino", "random") for a in ("cnn", "vit")}
    assert len(tuned) == 6 * 3 * 2
    assert {r["method"] for r in missing_rows(SETTINGS)} == {"imagenet"}
    assert all("study.weights" in r["reason"] for r in missing_rows(SETTINGS))
    # DINO's rows fine-tune DINO's export of that same arm; CASS's rows CASS's export
    by_id = {p.id: p for p in points}
    for p in tuned:
        if p.method in ("cass", "dino"):
            source = by_id[p.needs]
            assert source.method == p.method and f"weights={source.folder(tmp_path)}/export" in (
                p.overrides
            )
            assert p.method == "cass" or source.arm == p.arm
        else:
            assert p.needs is None and "weights=random" in p.overrides
    # every seed fine-tunes the same labelled images for every method: fraction and seed only
    cass = {(p.info["fraction"], p.info["seed"]) for p in tuned if p.method == "cass"}
    assert cass == {(f, s) for f in (0.01, 0.1, 1.0) for s in (0, 1)}


def test_cass_and_dino_share_encoders_init_length_and_batch(tmp_path):
    weights = tmp_path / "w"
    settings = replace(SETTINGS, weights={"cnn": str(weights / "c"), "vit": str(weights / "v")})
    points = build_plan(settings, tmp_path)
    shared = [o for o in points[0].overrides if o.startswith(("model.", "data.batch", "trainer.",
                                                              "seed"))]  # fmt: skip
    assert "model.pretrained=true" in shared and f"model.cnn_weights_file={weights / 'c'}" in shared
    for dino in points[1:3]:
        assert set(shared) <= set(dino.overrides)
    imagenet = [p for p in points if p.method == "imagenet"]
    assert {p.arm for p in imagenet} == {"cnn", "vit"} and not missing_rows(settings)
    assert f"model.weights_file={weights / 'v'}" in next(p for p in imagenet if p.arm == "vit"
                                                         ).overrides  # fmt: skip


def test_ids_are_stable_and_a_changed_setting_makes_new_points(tmp_path):
    first = build_plan(SETTINGS, tmp_path)
    assert [p.id for p in first] == [p.id for p in build_plan(SETTINGS, tmp_path)]
    assert len({p.id for p in first}) == len(first)
    longer = build_plan(replace(SETTINGS, pretrain_epochs=4), tmp_path)
    changed = {p.id for p in longer} - {p.id for p in first}
    # the pretraining points and everything fine-tuned from them are new; baselines are not
    assert {p.id for p in longer if p.id in changed} == {
        p.id for p in longer if p.method in ("cass", "dino")
    }  # fmt: skip


def test_robustness_grid_points_carry_batch_and_epochs(tmp_path):
    grid = replace(SETTINGS, methods=["cass", "dino"], fractions=[0.1], grid=[(8, 5), (16, 10)])
    points = build_plan(grid, tmp_path)
    tuned = [p for p in points if p.app == "finetune"]
    grid_points = {(p.info["grid_batch_size"], p.info["grid_epochs"]) for p in tuned}
    assert grid_points == {(8, 5), (16, 10)}
    main = build_plan(replace(SETTINGS, methods=["cass"]), tmp_path)
    assert not any("grid_batch_size" in p.info for p in main)  # only grid points are grid points
    assert len([p for p in points if p.app == "pretrain"]) == 2 * 3
    assert all("data.batch_size=8" in p.overrides for p in points if p.id.startswith(
        "pretrain") and p.info["batch_size"] == 8)  # fmt: skip


def test_statuses_are_read_from_the_folders(tmp_path):
    points = build_plan(SETTINGS, tmp_path)
    cass, dino_cnn = points[0], points[1]
    tuned = next(p for p in points if p.needs == cass.id)
    assert statuses_of(points, tmp_path)[tuned.id] == "blocked"
    export = cass.folder(tmp_path) / "export"
    export.mkdir(parents=True)
    (export / "meta.json").write_text("{}")
    (cass.folder(tmp_path) / "summary.json").write_text("{}")
    dead = {"pid": 2**22 + 12345, "host": socket.gethostname()}
    folder = dino_cnn.folder(tmp_path)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / STARTED_FILE).write_text(json.dumps(dead))
    statuses = statuses_of(points, tmp_path)
    assert statuses[cass.id] == "done" and statuses[tuned.id] == "pending"
    assert statuses[dino_cnn.id] == "interrupted"  # started, process gone, no checkpoint
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert statuses_of(points, tmp_path)[dino_cnn.id] == "partial"  # resumable
    (folder / STARTED_FILE).write_text(json.dumps({"pid": os.getpid(), "host": dead["host"]}))
    assert statuses_of(points, tmp_path)[dino_cnn.id] == "running"
    tuned.folder(tmp_path).mkdir(parents=True)
    (tuned.folder(tmp_path) / FAILED_FILE).write_text("{}")
    assert statuses_of(points, tmp_path)[tuned.id] == "failed"
    (tuned.folder(tmp_path) / "results.json").write_text("{}")
    assert statuses_of(points, tmp_path)[tuned.id] == "done"


def test_plan_json_round_trip(tmp_path):
    points = build_plan(SETTINGS, tmp_path)
    statuses = statuses_of(points, tmp_path)
    write_plan(tmp_path, SETTINGS, points, statuses)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["settings"]["kind"] == "paper"
    assert [p["status"] for p in plan["points"]] == [statuses[p.id] for p in points]
    assert all(p["digest"] and p["overrides"] for p in plan["points"])
    assert read_plan(tmp_path) == points


@pytest.mark.parametrize("mode", ["linear"])
def test_linear_mode_doubles_the_fine_tuning_points(tmp_path, mode):
    both = build_plan(replace(SETTINGS, modes=["finetune", mode]), tmp_path)
    one = build_plan(SETTINGS, tmp_path)
    assert len([p for p in both if p.app == "finetune"]) == 2 * len(
        [p for p in one if p.app == "finetune"]
    )
    assert any(p.id.endswith(f"-{mode}-" + p.digest[:8]) or f"-{mode}-" in p.id for p in both)


def test_byol_is_opt_in_and_planned_per_arm_like_dino(tmp_path):
    settings = replace(SETTINGS, methods=["cass", "byol", "random"], fractions=[1.0], seeds=[0],
                       method_overrides={"byol": ["model.head.dim=64"]})  # fmt: skip
    points = build_plan(settings, tmp_path)
    pretraining = {(p.method, p.arm): p for p in points if p.app == "pretrain"}
    assert list(pretraining) == [("cass", "both"), ("byol", "cnn"), ("byol", "vit")]
    byol = pretraining[("byol", "vit")]
    assert byol.overrides[:3] == ["model.head.dim=64", "model=byol", "model.arm=vit"]
    assert byol.id.startswith("pretrain-byol-vit-")
    tuned = [p for p in points if p.app == "finetune" and p.method == "byol"]
    assert {p.arm for p in tuned} == {"cnn", "vit"}
    assert all(p.needs == pretraining[("byol", p.arm)].id for p in tuned)
    assert "byol" not in {p.method for p in build_plan(SETTINGS, tmp_path)}  # opt-in


@pytest.mark.parametrize("project", ["${oc.env:HOME}", "a'b", "x}y"])
def test_a_wandb_project_that_is_not_a_plain_name_is_refused_when_planned(tmp_path, project):
    # a plan.json edited to hold an interpolation as the project must never reach Hydra
    settings = replace(SETTINGS, logger="wandb", wandb_project=project)
    with pytest.raises(ValueError, match=r"study\.wandb\.project="):
        build_plan(settings, tmp_path / "smoke-synthetic")


def test_a_plain_wandb_project_gives_every_point_its_run_settings(tmp_path):
    points = build_plan(replace(SETTINGS, logger="wandb", wandb_project="my study.v2"), tmp_path)
    assert all("logger.wandb.project='my study.v2'" in p.logging for p in points)
