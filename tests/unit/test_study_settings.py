"""``study.*`` settings checked before anything runs: one named error per bad value."""

from __future__ import annotations

import resource

import pytest

from cass_lightning.apps.run.console import refusal_message
from cass_lightning.apps.study.plan import MODES, StudySettings, build_plan, write_plan
from cass_lightning.apps.study.settings import StudySettingsError, check_study_settings
from cass_lightning.io import WriteRefusedError

GOOD = {
    "methods": ["cass", "dino", "imagenet", "random"], "arms": ["cnn", "vit"],
    "modes": ["finetune"], "fractions": [0.01, 0.1, 1.0], "seeds": [0, 1, 2],
    "epoch_scale": 1.0, "pretrain": {"epochs": 100, "batch_size": 16}, "robustness": None,
    "device": "cpu",
}  # fmt: skip


def test_the_paper_settings_pass():
    check_study_settings(GOOD)
    check_study_settings({**GOOD, "modes": ["finetune", "linear"], "device": "gpu",
                          "robustness": {"batch_sizes": [8], "epochs": [50]}})  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": ["bogus"]}, r"study\.methods: 'bogus' is not one of cass, dino"),
        ({"methods": []}, r"study\.methods=\[\]: give a non-empty list"),
        ({"arms": ["mlp"]}, r"study\.arms: 'mlp' is not one of cnn, vit"),
        ({"modes": ["probe"]}, r"study\.modes: 'probe' is not one of finetune, linear"),
        ({"seeds": []}, r"study\.seeds=\[\]: give a non-empty list"),
        ({"seeds": [0, 0]}, r"study\.seeds=\[0, 0\]: 0 listed twice"),
        ({"seeds": [0.5]}, r"study\.seeds: 0\.5 is not a whole number"),
        ({"fractions": [0.0]}, r"study\.fractions: 0\.0 is not a label fraction in \(0, 1\]"),
        ({"fractions": [1.5]}, r"study\.fractions: 1\.5 is not a label fraction"),
        ({"fractions": ["x"]}, r"study\.fractions: 'x' is not a label fraction"),
        ({"epoch_scale": -1}, r"study\.epoch_scale=-1: give a positive number"),
        ({"epoch_scale": 0}, r"study\.epoch_scale=0: give a positive number"),
        ({"epoch_scale": float("nan")}, r"study\.epoch_scale=nan"),
        ({"pretrain": {"epochs": 0, "batch_size": 16}}, r"study\.pretrain\.epochs=0"),
        ({"pretrain": {"epochs": 1, "batch_size": True}}, r"study\.pretrain\.batch_size=True"),
        ({"robustness": {"batch_sizes": [8], "epochs": [-5]}}, r"study\.robustness\.epochs=-5"),
        ({"device": "tpu"}, r"study\.device='tpu': give one of cpu, gpu"),
    ],
)
def test_a_bad_setting_is_named(change, message):
    with pytest.raises(StudySettingsError, match=message) as err:
        check_study_settings({**GOOD, **change})
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the apps' refusal: exit 1, one line


def test_the_planner_knows_the_classifiers_modes():
    from cass_lightning.modules.classifier import MODES as CLASSIFIER_MODES

    assert tuple(MODES) == tuple(CLASSIFIER_MODES)


def test_a_file_size_limit_while_writing_plan_json_is_one_named_line(tmp_path):
    settings = StudySettings(
        kind="smoke", encoders={"cnn": "resnet10t", "vit": "vit_tiny_patch16_224", "img_size": 32},
        weights={"cnn": None, "vit": None}, methods=["cass", "random"], arms=["cnn", "vit"],
        fractions=[1.0], seeds=[0, 1], modes=["finetune"], pretrain_epochs=1,
        pretrain_batch_size=8, pretrain_seed=77,
    )  # fmt: skip
    points = build_plan(settings, tmp_path)
    write_plan(tmp_path, settings, points[:1], {p.id: "pending" for p in points})
    before = (tmp_path / "plan.json").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before), hard))  # ulimit -f, for this write
    try:
        with pytest.raises(WriteRefusedError) as err:
            write_plan(tmp_path, settings, points, {p.id: "pending" for p in points})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = refusal_message(err.value)  # what the study prints after "Error: ", exit 1
    assert message is not None and "\n" not in message
    assert message.startswith(f"cannot write {tmp_path / 'plan.json'}") and "ulimit -f" in message
    assert (tmp_path / "plan.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left
