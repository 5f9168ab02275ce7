"""The edges of predicting and exporting: link loops and files that are not files, float and
16-bit images, non-finite weights, damaged meta.json fields and records, each refused by name
(or skipped and counted) before anything is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from cass_lightning.apps.run.runinfo import read_run_info
from cass_lightning.data.index import load_rgb
from cass_lightning.export import check_classifier_meta, export_classifier, load_classifier
from cass_lightning.io import read_json
from cass_lightning.prediction import folder_images
from cass_lightning.walk import walk_files
from data_fixtures import image, snapshot

META = {"arm": "cnn", "timm_name": "resnet10t", "img_size": 32, "in_chans": 3,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "classes": ["a", "b"],
        "multi_label": False, "threshold": None}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    return timm.create_model("resnet10t", pretrained=False, num_classes=2).eval()


def test_a_link_loop_and_a_fifo_are_skipped_and_counted(tmp_path):
    root = tmp_path / "images"
    image(root / "a" / "1.png")
    os.symlink(root, root / "a" / "again")  # a loop back to the top
    os.mkfifo(root / "a" / "blocked.png")  # opening it would block for ever
    (tmp_path / "store").mkdir()
    image(tmp_path / "store" / "2.png")
    os.symlink(tmp_path / "store", root / "b")  # a linked class folder: followed
    found = folder_images(root, ["a", "b"])
    assert [Path(p).name for p in found.paths] == ["1.png", "2.png"]
    assert found.labels == [("a",), ("b",)]
    assert found.skipped == {"link loops": [str(root / "a" / "again")],
                             "not regular files": [str(root / "a" / "blocked.png")]}  # fmt: skip
    with pytest.raises(OSError, match=r"blocked\.png is not a regular file"):
        load_rgb(root / "a" / "blocked.png")


def test_foreign_labels_are_not_kept_as_labels_but_walks_list_them(tmp_path):
    image(tmp_path / "cat" / "1.png")
    found = folder_images(tmp_path, ["a", "b"])
    assert found.labels_state.state == "foreign"
    walk = walk_files(tmp_path)
    assert [p.name for p in walk.files] == ["1.png"] and not walk.loops and not walk.special


def test_float_and_16_bit_images_are_scaled_and_other_ranges_refused(tmp_path):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    pixels = np.asarray(load_rgb(tmp_path / "unit.tif"))
    assert pixels.shape == (8, 8, 3) and pixels.max() == 255 and pixels.min() == 0
    Image.fromarray(ramp * 255, mode="F").save(tmp_path / "bytes.tif")
    assert np.asarray(load_rgb(tmp_path / "bytes.tif")).max() == 255
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(load_rgb(tmp_path / "deep.png"))[..., 0].max() == 255
    Image.fromarray(ramp * 1000 - 5, mode="F").save(tmp_path / "raw.tif")
    with pytest.raises(OSError, match=r"raw.tif.*floating-point image with values -5\.\.995"):
        load_rgb(tmp_path / "raw.tif")


def test_non_finite_weights_are_refused_at_export_and_at_load(tmp_path, tiny_model):
    out = export_classifier(tiny_model, tmp_path / "good", dict(META))
    _, meta, file = load_classifier(out)
    assert meta["classes"] == ["a", "b"]
    poisoned = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    poisoned["fc.weight"][0, 0] = float("nan")
    bad = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    bad.load_state_dict(poisoned)
    one = r"non-finite values \(NaN or inf\) in 1 tensor\(s\), e\.g\. fc\.weight"
    with pytest.raises(ValueError, match=one):
        export_classifier(bad, tmp_path / "bad", dict(META))
    assert not (tmp_path / "bad").exists()  # refused before the folder was made
    save_file(poisoned, str(file))  # the export's file replaced by a NaN one
    with pytest.raises(ValueError, match=f"{file} hold non-finite values"):
        load_classifier(out)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("classes", ["a", "a"], "classes names 'a' twice"),
        ("timm_name", "no_such_net", "timm_name names 'no_such_net', which is not a timm model"),
        ("img_size", 100000, "img_size must be an integer in"),
        ("img_size", "${oc.env:HOME}", "img_size must be an integer"),
        ("std", [0, 0, 0], r"std\[0\] must be a finite number in"),
        ("std", [-0.2, 0.2, 0.2], r"std\[0\] must be a finite number in"),
        ("mean", [5, 0.5, 0.5], r"mean\[0\] must be a finite number in"),
        ("mean", [0.5, 0.5], "mean holds 2 values for 3 input channels"),
        ("multi_label", "yes", "multi_label must be true or false"),
    ],
)
def test_a_classifier_meta_field_out_of_range_is_refused_by_file_and_field(
    tmp_path, tiny_model, field, value, message
):
    out = export_classifier(tiny_model, tmp_path / "export", dict(META))
    meta = json.loads((out / "meta.json").read_text())
    before = snapshot(tmp_path)
    (out / "meta.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(
        ValueError, match=f"{out / 'meta.json'}: classifier meta.json field {message}"
    ):
        load_classifier(out)
    with pytest.raises(ValueError, match=message):
        check_classifier_meta({**META, field: value}, "x")
    assert set(snapshot(tmp_path)) == set(before)  # nothing new written


def test_deep_json_and_damaged_run_records_are_named(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=r"deep\.json is not a valid file .nested deeper than"):
        read_json(tmp_path / "deep.json")
    record = tmp_path / "run_info.json"
    for text, message in [
        ("[1, 2]", "is not a valid run_info.json: it holds a list"),
        ('{"run_id": "../../x"}', "field run_id is not a plain name"),
        ('{"run_id": "${oc.env:HOME}"}', "field run_id is not a plain name"),
        ('{"run_id": "ab12cd34"', r"is not a valid run_info.json \(not JSON"),
        ('{"run_id": "ab12cd34", "starts": 3}', "field starts must be a list"),
    ]:
        record.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_run_info(tmp_path)
    record.write_text('{"run_id": "ab12cd34", "starts": []}')
    assert read_run_info(tmp_path)["run_id"] == "ab12cd34"


def test_a_fifo_in_a_class_folder_is_a_bad_file_named_as_one(tmp_path):
    from cass_lightning.data.layouts import build_index

    image(tmp_path / "a" / "1.png")
    image(tmp_path / "b" / "2.png")
    os.mkfifo(tmp_path / "a" / "pipe.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "b" / "dangling.png")
    index = build_index("image_folder", tmp_path, on_bad_file="skip")
    reasons = {Path(key).name: why for key, why in index.skipped}
    assert reasons == {"pipe.png": "not a regular file (a FIFO, device or socket)",
                       "dangling.png": "broken symbolic link"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [({"timm_name": "no_such_net"}, "cnn.timm_name names 'no_such_net', which is not a timm"),
     ({"img_size": 100000}, "cnn.img_size must be an integer in"),
     ({"in_chans": "3"}, "cnn.in_chans must be an integer")],
)  # fmt: skip
def test_a_backbone_export_entry_out_of_range_is_refused_when_loaded(tmp_path, change, message):
    from cass_lightning.encoders import EncoderSpec
    from cass_lightning.export import ExportedArm, export_backbones, load_backbone

    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    spec = EncoderSpec("resnet10t", None, 3, 4, model.num_features)
    run = {"method": "cass", "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}
    out = export_backbones({"cnn": ExportedArm(spec, model)}, tmp_path / "e", run)
    assert load_backbone(out, "cnn").num_classes == 4
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "cnn": {**meta["cnn"], **change}}))
    with pytest.raises(ValueError, match=f"{out / 'meta.json'}: export meta.json field {message}"):
        load_backbone(out, "cnn")
