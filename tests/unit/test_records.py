"""Every file a run reads back is parsed as plain data and checked field by field: a value that
is not what the field may hold is refused with the file and the field named, never evaluated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cass_lightning.io import MAX_DEPTH, RecordError, read_json, read_yaml
from cass_lightning.records import (
    check_backbone_meta,
    check_classifier_meta,
    check_pretraining_hparams,
    check_run_info,
    check_summary,
    plain_floats,
    plain_int,
)

OPEN = "${oc.create:{_target_:builtins.open,file:PWNED,mode:w}}"
SECRET = "${oc.env:MY_SECRET}"


def backbone_meta(**top) -> dict:
    arm = {"timm_name": "resnet10t", "img_size": 32, "in_chans": 3, "num_classes": 1000,
           "num_features": 512, "file": "cnn.safetensors", "projector_file": None}  # fmt: skip
    return {"format": "cass-lightning-export/1", "method": "cass", "img_size": 32,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "cnn": arm,
            **top}  # fmt: skip


def classifier_meta(**fields) -> dict:
    return {"kind": "classifier", "arm": "cnn", "timm_name": "resnet10t", "img_size": 32,
            "in_chans": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "classes": ["glioma", "no tumor"], "num_classes": 2, "multi_label": False,
            "threshold": None, "file": "cnn_classifier.safetensors", **fields}  # fmt: skip


def test_records_as_written_pass():
    assert check_backbone_meta(backbone_meta(), "m")["cnn"]["timm_name"] == "resnet10t"
    assert check_classifier_meta(classifier_meta(), "m")["classes"] == ["glioma", "no tumor"]
    hp = {"cnn": "resnet10t", "vit": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 3}
    assert check_pretraining_hparams(hp, "c", "vit")["img_size"] == 32
    info = {"run_id": "abcd1234", "run_uuid": "0" * 32, "starts": [
        {"started": "2026-01-01T00:00:00+00:00", "overrides": ["seed=1"], "seconds": 1.5,
         "steps": 3, "images": 24, "outcome": "finished"}]}  # fmt: skip
    assert check_run_info(info, "r") == info
    assert check_summary({"fit_seconds": 2.0, "steps": 4, "cost_comparable": True}, "s")


@pytest.mark.parametrize(
    ("meta", "field", "why"),
    [
        (backbone_meta(img_size=OPEN), "img_size", "integer"),
        (backbone_meta(mean=[OPEN, 0.4, 0.4]), r"mean\[0\]", "must be a number"),
        (backbone_meta(std=[0, 0.2, 0.2]), r"std\[0\]", "finite number in"),
        (backbone_meta(std=[-1, 0.2, 0.2]), r"std\[0\]", "finite number in"),
        (backbone_meta(mean=[0.5, 0.5]), "mean", "2 values for 3 input channels"),
        (backbone_meta(img_size=100000), "img_size", "integer in"),
        (backbone_meta(cnn={"timm_name": "no_such_net", "in_chans": 3, "file": "cnn.safetensors"}),
         "cnn.timm_name", "not a timm model"),
        (backbone_meta(cnn={"timm_name": OPEN, "in_chans": 3, "file": "cnn.safetensors"}),
         "cnn.timm_name", "not a plain name"),
        (backbone_meta(cnn={"timm_name": "resnet10t", "in_chans": 3, "file": "../../x"}),
         "cnn.file", "must be one of cnn.safetensors"),
        (backbone_meta(cnn=[1, 2]), "cnn", "holds a list"),
    ],
)  # fmt: skip
def test_a_backbone_meta_json_is_refused_by_field(meta, field, why):
    with pytest.raises(RecordError, match=rf"^m: export meta\.json field {field} .*{why}"):
        check_backbone_meta(meta, "m")


@pytest.mark.parametrize(
    ("fields", "field", "why"),
    [
        ({"img_size": OPEN}, "img_size", "integer"),
        ({"classes": ["a", "a"]}, "classes", "names 'a' twice"),
        ({"classes": ["a", "b|c\n| x"]}, r"classes\[1\]", "not a plain class name"),
        ({"num_classes": 3}, "num_classes", "classes names 2"),
        ({"std": [0.0, 0.0, 0.0]}, r"std\[0\]", "finite number"),
        ({"mean": [5e3, 0.5, 0.5]}, r"mean\[0\]", "finite number"),
        ({"mean": [0.5, 5, 0.5]}, r"mean\[1\]", r"finite number in \[0, 1\]"),
        ({"std": [0.2, -0.2, 0.2]}, r"std\[1\]", "finite number"),
        ({"arm": "resnet"}, "arm", "must be one of cnn, vit"),
        ({"multi_label": "no"}, "multi_label", "true or false"),
        ({"multi_label": True, "threshold": math.nan}, "threshold", "finite number"),
        ({"timm_name": "no_such_net"}, "timm_name", "not a timm model"),
    ],
)  # fmt: skip
def test_a_classifier_meta_json_is_refused_by_field(fields, field, why):
    with pytest.raises(RecordError, match=rf"^m: classifier meta\.json field {field} .*{why}"):
        check_classifier_meta(classifier_meta(**fields), "m")


@pytest.mark.parametrize(
    ("info", "field"),
    [
        ({"run_id": SECRET}, "run_id"),
        ({"run_id": OPEN}, "run_id"),
        ({"run_id": "../x/y"}, "run_id"),
        ({"run_id": "ab", "starts": [{"seconds": -1}]}, r"starts\[0\]\.seconds"),
        ({"run_id": "ab", "starts": [{"steps": 2.5}]}, r"starts\[0\]\.steps"),
        ({"run_id": "ab", "starts": "x"}, "starts"),
        ({"run_id": "ab", "starts": [{"overrides": [1]}]}, r"starts\[0\]\.overrides"),
    ],
)
def test_a_run_info_json_is_refused_by_field(info, field):
    with pytest.raises(RecordError, match=rf"^r: run_info\.json field {field} "):
        check_run_info(info, "r")
    with pytest.raises(RecordError, match=r"^r is not a valid run_info\.json: it holds a list"):
        check_run_info([info], "r")


def test_checkpoint_hparams_and_summary_are_refused_by_field():
    hp = {"cnn": "resnet10t", "vit": "vit_tiny_patch16_224", "img_size": OPEN}
    with pytest.raises(RecordError, match=r"c: checkpoint field hyper_parameters\.img_size"):
        check_pretraining_hparams(hp, "c", "cnn")
    with pytest.raises(RecordError, match=r"hyper_parameters\.cnn is not a plain name"):
        check_pretraining_hparams({**hp, "cnn": SECRET, "img_size": 32}, "c", "cnn")
    with pytest.raises(RecordError, match=r"s: summary\.json field fit_seconds must be a number"):
        check_summary({"fit_seconds": SECRET}, "s")


def test_values_for_a_config_are_numbers_or_refused():
    assert plain_int(32, "x") == 32 and plain_int(32.0, "x") == 32
    assert plain_floats((0.5, 1), "m") == [0.5, 1.0]
    for bad in (OPEN, "32", True, 32.5, math.inf, None):
        with pytest.raises(RecordError, match="x must be an integer"):
            plain_int(bad, "x")
    with pytest.raises(RecordError, match="m must be a list of finite numbers"):
        plain_floats([OPEN, 0.4], "m")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deep_nesting_is_a_named_error_not_a_recursion_error(tmp_path, suffix):
    read = read_json if suffix == ".json" else read_yaml
    deep, shallow = tmp_path / f"deep{suffix}", tmp_path / f"ok{suffix}"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecordError, match=rf"deep{suffix} is not a valid record \(nested deeper"):
        read(deep, "record")
    just_over = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    deep.write_text(just_over)
    with pytest.raises(RecordError, match=f"nested deeper than {MAX_DEPTH} levels"):
        read(deep, "record")
    shallow.write_text(json.dumps({"a": {"b": [1, 2, {"c": SECRET}]}}))
    assert read(shallow, "record") == {"a": {"b": [1, 2, {"c": SECRET}]}}  # text, unresolved


def test_yaml_is_read_without_tags_or_interpolation(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SECRET", "s3cr3t")
    path = tmp_path / "hydra.yaml"
    path.write_text(f"hydra:\n  runtime:\n    cwd: {SECRET}\n")
    assert read_yaml(path, "saved hydra.yaml")["hydra"]["runtime"]["cwd"] == SECRET
    path.write_text("a: !!python/object/apply:builtins.open ['PWNED', 'w']\n")
    with pytest.raises(RecordError, match=r"hydra\.yaml is not a valid saved hydra\.yaml \(not"):
        read_yaml(path, "saved hydra.yaml")
    assert not Path("PWNED").exists() and not (tmp_path / "PWNED").exists()


def test_a_data_folders_deep_manifest_is_named_not_a_recursion_error(tmp_path):
    from cass_lightning.data import synthetic
    from cass_lightning.data.cache import store

    (tmp_path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileExistsError, match=r"manifest\.json could not be read .*nested deeper"):
        synthetic._check_existing(tmp_path, {"seed": 1})
    assert store._read_manifest(tmp_path) is None  # read as no usable cache
