"""The fine-tuned classifier taken out (cass-export of a fine-tuning checkpoint) and applied to
new images (cass-predict), on tiny fine-tuning runs of both arms."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from app_helpers import app_env, compose_app
from cass_lightning.apps.export import export_checkpoint, load_classifier_checkpoint
from cass_lightning.apps.finetune import RESULTS_FILE, finetune
from cass_lightning.apps.predict import (
    PREDICTIONS_CSV,
    PREDICTIONS_JSON,
    device_and_autocast,
    predict,
    split_note,
)
from cass_lightning.data.transforms import eval_transform
from cass_lightning.io import file_sha256
from cass_lightning.modules.classifier import EXPORT_RECORD_KEY, ClassifierModule
from cass_lightning.prediction import folder_images
from data_fixtures import image

TIMM = {"cnn": "resnet10t", "vit": "vit_tiny_patch16_224"}
TINY_RUN = [
    "data.images_per_class=3", "data.val_images_per_class=1", "data.image_size=32",
    "data.batch_size=6", "data.num_workers=0", "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false", "weights=random", "model.img_size=32",
    "logger=csv",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One finished tiny fine-tuning run per arm (random init, 6 synthetic classes)."""
    root = tmp_path_factory.mktemp("finetune")
    found = {}
    for arm in ("cnn", "vit"):
        cfg = compose_app(root, [*TINY_RUN, f"arm={arm}", f"model.timm_name={TIMM[arm]}"],
                          config_name="finetune", output_dir=root / arm)  # fmt: skip
        finetune(cfg)
        found[arm] = root / arm
    return found


def best_checkpoint(run: Path) -> Path:
    return Path(json.loads((run / RESULTS_FILE).read_text())["best_checkpoint"])


def fixed_input(img_size: int = 32) -> torch.Tensor:
    return torch.randn(3, 3, img_size, img_size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ the classifier export
@pytest.mark.parametrize("arm", ["cnn", "vit"])
def test_classifier_export_is_plain_timm_with_the_checkpoints_logits(runs, tmp_path, arm):
    ckpt = best_checkpoint(runs[arm])
    out = export_checkpoint(ckpt, tmp_path / "export")
    meta = json.loads((out / "meta.json").read_text())
    results = json.loads((runs[arm] / RESULTS_FILE).read_text())
    # plain timm, strictly, with the new head's width
    model = timm.create_model(meta["timm_name"], num_classes=len(meta["classes"]),
                              img_size=32) if arm == "vit" else timm.create_model(
        meta["timm_name"], num_classes=len(meta["classes"]))  # fmt: skip
    model.load_state_dict(load_file(str(out / f"{arm}_classifier.safetensors")), strict=True)
    module, _ = load_classifier_checkpoint(ckpt)
    x = fixed_input()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), module(x))
    assert meta["kind"] == "classifier" and meta["arm"] == arm
    assert meta["timm_name"] == TIMM[arm] and meta["img_size"] == 32 and meta["in_chans"] == 3
    assert meta["classes"] == results["classes"] and len(meta["classes"]) == 6
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["multi_label"] is False and meta["threshold"] is None
    assert (meta["label_fraction"], meta["seed"]) == (1.0, 0)
    assert meta["test_metrics"] == results["metrics"] and meta["test_metrics"]
    assert meta["pretraining"] == results["weights_loaded"]
    assert meta["method"] == "random"
    assert meta["sha256"] == file_sha256(out / f"{arm}_classifier.safetensors")
    assert meta["data_splits"]["split_seed"] == 77
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_checkpoint(ckpt, out)


def test_classifier_export_without_results_json_has_no_test_metrics(runs, tmp_path):
    """A checkpoint copied away from its run still knows its classes and preprocessing (the
    checkpoint records them) but claims no test metrics."""
    ckpt = tmp_path / "alone" / "model.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(best_checkpoint(runs["cnn"]).read_bytes())
    meta = json.loads((export_checkpoint(ckpt) / "meta.json").read_text())
    assert meta["test_metrics"] is None and len(meta["classes"]) == 6
    assert meta["pretraining"]["init"] == "random" and meta["img_size"] == 32


# ------------------------------------------------------------------ cass-predict
def labelled_folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            image(root / name / f"{name}_{i}.png", size=(40, 36), seed=10 * c + i)
    return root


def predict_cfg(tmp_path: Path, overrides: list[str], out: str = "pred"):
    return compose_app(tmp_path, ["progress=false", "num_workers=0", "batch_size=4", *overrides],
                       config_name="predict", output_dir=tmp_path / out)  # fmt: skip


def classes_of(run: Path) -> list[str]:
    return json.loads((run / RESULTS_FILE).read_text())["classes"]


def module_probabilities(run: Path, files: list[Path]) -> torch.Tensor:
    module, meta = load_classifier_checkpoint(best_checkpoint(run))
    transform = eval_transform(meta["img_size"], meta["mean"], meta["std"])
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        return module(batch).softmax(dim=-1)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predictions_from_a_run_and_from_its_export_agree_with_the_module(runs, tmp_path):
    run = runs["cnn"]
    classes = classes_of(run)
    folder = labelled_folder(tmp_path / "images", classes)
    (folder / classes[0] / "broken.png").write_bytes(b"not a png")
    from_run = predict(predict_cfg(tmp_path, [f"classifier={run}", f"images={folder}"], "a"))
    export = export_checkpoint(best_checkpoint(run), tmp_path / "export")
    from_export = predict(predict_cfg(tmp_path, [f"classifier={export}", f"images={folder}"], "b"))
    rows = read_rows(tmp_path / "a" / PREDICTIONS_CSV)
    assert list(rows[0]) == ["path", "predicted", *(f"prob_{c}" for c in classes), "label",
                             "error"]  # fmt: skip
    assert rows == read_rows(tmp_path / "b" / PREDICTIONS_CSV)
    good = [r for r in rows if not r["error"]]
    expected = module_probabilities(run, [Path(r["path"]) for r in good])
    got = torch.tensor([[float(r[f"prob_{c}"]) for c in classes] for r in good])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert [r["predicted"] for r in good] == [classes[int(i)] for i in expected.argmax(1)]
    assert [r["label"] for r in good] == [Path(r["path"]).parent.name for r in good]
    # the corrupt image: named, counted, not scored
    (bad,) = [r for r in rows if r["error"]]
    assert bad["path"].endswith("broken.png") and "broken.png" in bad["error"]
    assert bad["predicted"] == "" and bad[f"prob_{classes[0]}"] == ""
    assert from_run["counts"]["unreadable"] == 1 and from_run["unreadable"] == [bad["path"]]
    assert from_run["counts"]["images"] == len(rows) == 2 * len(classes) + 1
    assert from_run["labels"]["state"] == "scored"
    metrics = from_run["metrics"]
    hits = sum(r["predicted"] == r["label"] for r in good)
    assert metrics["images"] == len(good) and metrics["acc"] == pytest.approx(hits / len(good))
    assert {"f1_macro", "balanced_acc"} <= set(metrics) and set(metrics["per_class"]) == set(
        classes
    )  # fmt: skip
    assert from_export["metrics"] == metrics
    saved = json.loads((tmp_path / "a" / PREDICTIONS_JSON).read_text())
    assert saved["weights_sha256"] == file_sha256(best_checkpoint(run))
    assert saved["preprocessing"]["img_size"] == 32 and saved["classes"] == classes
    assert from_export["weights_sha256"] == file_sha256(export / "cnn_classifier.safetensors")
    # an output folder that is not empty is refused before anything is read
    with pytest.raises(FileExistsError, match="not empty"):
        predict(predict_cfg(tmp_path, [f"classifier={run}", f"images={folder}"], "a"))


def test_folder_without_labels_and_folder_of_other_classes_are_told_apart(runs, tmp_path, capsys):
    run = runs["vit"]
    plain = tmp_path / "plain"
    for i in range(3):
        image(plain / f"scan_{i}.png", seed=i)
    result = predict(predict_cfg(tmp_path, [f"classifier={run}", f"images={plain}"], "plain_out"))
    assert result["labels"]["state"] == "none" and result["metrics"] is None
    assert "label" not in read_rows(tmp_path / "plain_out" / PREDICTIONS_CSV)[0]
    foreign = labelled_folder(tmp_path / "foreign", ["cat", "dog"], per_class=1)
    result = predict(
        predict_cfg(tmp_path, [f"classifier={run}", f"images={foreign}"], "foreign_out")
    )
    note = result["labels"]["note"]
    assert result["labels"]["state"] == "foreign" and result["metrics"] is None
    assert note.startswith("labels not scored: folder classes {cat, dog} are not the model's")
    assert note in capsys.readouterr().out
    rows = read_rows(tmp_path / "foreign_out" / PREDICTIONS_CSV)
    assert [r["label"] for r in rows] == ["", ""]  # not the model's classes: not shown as labels
    assert result["counts"]["labelled"] == 0


def test_loops_and_fifos_are_skipped_and_counted_and_an_empty_images_is_refused(
    runs, tmp_path, capsys
):
    run = runs["cnn"]
    folder = labelled_folder(tmp_path / "images", classes_of(run)[:1], per_class=2)
    os.symlink(folder, folder / "loop")
    os.mkfifo(folder / "waiting.png")
    result = predict(predict_cfg(tmp_path, [f"classifier={run}", f"images={folder}"]))
    assert result["counts"]["images"] == 2 and result["counts"]["predicted"] == 2
    assert result["counts"]["skipped"] == {"link loops": 1, "not regular files": 1}
    assert result["skipped"]["not regular files"] == [str(folder / "waiting.png")]
    assert "skipped:     1 link loops" in capsys.readouterr().out
    with pytest.raises(ValueError, match="images= is empty"):
        predict(predict_cfg(tmp_path, [f"classifier={run}", "images="], "empty"))
    assert not (tmp_path / "empty" / PREDICTIONS_CSV).exists()


def test_a_hostile_classifier_export_is_refused_before_anything_is_written(runs, tmp_path):
    """Payload meta.json files (and NaN weights) in a classifier export handed over: each is
    refused naming the file and the field, before the output folder exists; no marker file,
    the export and the data left as they were."""
    from safetensors.torch import save_file

    from data_fixtures import snapshot

    good = export_checkpoint(best_checkpoint(runs["cnn"]), tmp_path / "good")
    meta = json.loads((good / "meta.json").read_text())
    marker = tmp_path / "PWNED"
    payload = f"${{oc.create:{{_target_:builtins.open,file:{marker},mode:w}}}}"
    cases = {
        "img_size": {"img_size": payload},
        "mean": {"mean": [payload, 0.5, 0.5]},
        "std": {"std": [0, 0, 0]},
        "classes": {"classes": [meta["classes"][0]] * len(meta["classes"])},
        "timm_name": {"timm_name": "resnet_no_such"},
        "img_size ": {"img_size": 100000},
    }
    data = tmp_path / "data" / "synthetic"
    tried = 0
    for field, change in cases.items():
        export = tmp_path / f"export-{tried}"
        shutil.copytree(good, export)
        (export / "meta.json").write_text(json.dumps({**meta, **change}))
        before = snapshot(tmp_path)
        over = [f"classifier={export}", "data=synthetic", f"data.root={data}"]
        where = f"{export / 'meta.json'}: classifier meta.json field {field.strip()}"
        with pytest.raises(ValueError, match=where):
            predict(predict_cfg(tmp_path, over, f"out-{tried}"))
        assert snapshot(tmp_path) == before and not marker.exists()
        tried += 1
    poisoned = tmp_path / "poisoned"
    shutil.copytree(good, poisoned)
    weights = load_file(poisoned / meta["file"])
    weights["fc.weight"][0, 0] = float("inf")
    save_file(weights, str(poisoned / meta["file"]))
    with pytest.raises(ValueError, match="hold non-finite values"):
        predict(predict_cfg(tmp_path, [f"classifier={poisoned}", "images=x"], "out-nan"))
    assert not (tmp_path / "out-nan").exists() and tried == len(cases)
    state = torch.load(best_checkpoint(runs["cnn"]), map_location="cpu", weights_only=True)
    state["hyper_parameters"]["img_size"] = payload  # loads with weights_only: a plain string
    ckpt = tmp_path / "hostile.ckpt"
    torch.save(state, ckpt)
    with pytest.raises(
        ValueError, match=r"hostile\.ckpt: classifier meta.json field img_size must be an integer"
    ):
        predict(predict_cfg(tmp_path, [f"classifier={ckpt}", "data=synthetic"], "out-ckpt"))
    with pytest.raises(
        ValueError, match=r"hostile\.ckpt: classifier meta.json field img_size must be an integer"
    ):
        export_checkpoint(ckpt, tmp_path / "out-export")
    assert not marker.exists() and not (tmp_path / "out-export").exists()


def test_csv_input_with_labels_and_maps(runs, tmp_path):
    run = runs["cnn"]
    classes = classes_of(run)
    folder = labelled_folder(tmp_path / "images", classes[:2], per_class=2)
    files = sorted(folder.rglob("*.png"))
    lines = ["path,label", *(f"images/{f.relative_to(folder)},{f.parent.name}" for f in files)]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    over = [f"classifier={run}", f"images={tmp_path / 'list.csv'}", "maps=true", "maps_count=3"]
    result = predict(predict_cfg(tmp_path, over))
    assert result["input"]["kind"] == "csv" and result["labels"]["state"] == "scored"
    assert result["metrics"]["images"] == 4
    rows = read_rows(tmp_path / "pred" / PREDICTIONS_CSV)
    assert [r["path"] for r in rows] == [line.split(",")[0] for line in lines[1:]]
    pngs = sorted((tmp_path / "pred" / "maps").glob("*.png"))
    assert len(pngs) == 3 == len(result["maps"])
    assert Image.open(pngs[0]).size[1] > 32  # the image and its map, side by side


def test_dataset_layout_split_and_refusals(runs, tmp_path):
    run = runs["vit"]
    data = tmp_path / "data" / "synthetic"
    over = [f"classifier={run}", "data=synthetic", f"data.root={data}", "data.images_per_class=2",
            "data.val_images_per_class=1", "data.image_size=32", "split=val"]  # fmt: skip
    result = predict(predict_cfg(tmp_path, over))
    assert result["input"]["split"] == "val" and result["counts"]["images"] == 6
    assert result["labels"]["state"] == "scored" and result["metrics"]["images"] == 6
    with pytest.raises(ValueError, match=r"images=<folder or \.csv> or data="):
        predict(predict_cfg(tmp_path, [f"classifier={run}"], "none"))
    with pytest.raises(FileNotFoundError, match="classifier not found"):
        predict(predict_cfg(tmp_path, [f"classifier={tmp_path / 'gone'}", "images=x"], "gone"))
    with pytest.raises(ValueError, match="pretraining export"):
        (tmp_path / "bb").mkdir()
        (tmp_path / "bb" / "meta.json").write_text(json.dumps({"cnn": {"file": "cnn.st"}}))
        predict(predict_cfg(tmp_path, [f"classifier={tmp_path / 'bb'}", "images=x"], "bb_out"))


@pytest.mark.slow
def test_app_runs_as_a_program(runs, tmp_path):
    """As a user runs it, with a loader worker process reading a broken file too."""
    folder = labelled_folder(tmp_path / "images", classes_of(runs["cnn"]), per_class=1)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    args = [sys.executable, "-m", "cass_lightning.apps.predict", f"classifier={runs['cnn']}",
            f"images={folder}", "num_workers=1", f"output={tmp_path / 'out'}"]  # fmt: skip
    done = subprocess.run(args, env=app_env(tmp_path), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "predicted 6 of 7 images" in done.stdout and "unreadable:  1" in done.stdout
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written >= {PREDICTIONS_CSV, PREDICTIONS_JSON, "predict.log", ".hydra"}
    assert "predicted 6 of 7 images" in (tmp_path / "out" / "predict.log").read_text()


def test_a_split_drawn_otherwise_than_in_fine_tuning_is_named(tmp_path):
    trained = {"layout": "image_folder", "root": str(tmp_path), "val_fraction": 0.1,
               "test_fraction": 0.1, "split_seed": 77}  # fmt: skip
    meta = {"data_splits": trained}
    same = dict(trained)
    assert split_note(same, meta, "test", official=False) is None
    other = {**trained, "test_fraction": 0.2}
    note = split_note(other, meta, "test", official=False)
    assert note.startswith("the test split is not the fine-tuning run's: test_fraction=0.2")
    assert split_note(other, meta, "test", official=True) is None  # the distribution's own
    assert split_note(other, meta, "all", official=False) is None
    assert split_note({**other, "root": str(tmp_path / "x")}, meta, "test", False) is None


def hand_made_checkpoint(path: Path, classes: list[str], multi_label: bool) -> ClassifierModule:
    """A ClassifierModule saved as Lightning saves it, with the record a fine-tuning run keeps."""
    module = ClassifierModule(arm="cnn", init="random", timm_name="resnet10t", img_size=32,
                              num_classes=len(classes), multi_label=multi_label)  # fmt: skip
    record = {"classes": classes, "mean": [0.5] * 3, "std": [0.25] * 3, "method": "random",
              "weights_init": {"init": "random"}}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__,
                EXPORT_RECORD_KEY: record}, path)  # fmt: skip
    return module.eval()


def test_multi_label_classifier_gives_sigmoids_and_the_threshold(tmp_path):
    classes = ["DM", "IBM", "PM"]
    module = hand_made_checkpoint(tmp_path / "ml" / "model.ckpt", classes, multi_label=True)
    folder = tmp_path / "images"
    for i in range(3):
        image(folder / f"b{i}.png", seed=i)
    lines = ["path,label", "images/b0.png,DM|PM", "images/b1.png,IBM", "images/b2.png,"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    over = [f"classifier={tmp_path / 'ml' / 'model.ckpt'}", f"images={tmp_path / 'list.csv'}"]
    result = predict(predict_cfg(tmp_path, over))
    assert result["multi_label"] is True and result["threshold"] == 0.5
    assert result["preprocessing"]["mean"] == [0.5] * 3  # read from the checkpoint
    rows = read_rows(tmp_path / "pred" / PREDICTIONS_CSV)
    transform = eval_transform(32, [0.5] * 3, [0.25] * 3)
    batch = torch.stack([transform(Image.open(folder / f"b{i}.png").convert("RGB"))
                         for i in range(3)])  # fmt: skip
    with torch.no_grad():
        expected = torch.sigmoid(module(batch))
    got = torch.tensor([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    for row, probs in zip(rows, expected, strict=True):
        assert row["predicted"] == "|".join(c for c, p in zip(classes, probs) if p >= 0.5)
    assert [r["label"] for r in rows] == ["DM|PM", "IBM", ""]
    assert result["metrics"]["images"] == 2 and "exact_match" in result["metrics"]
    assert result["metrics"]["confusion"] is None


def test_device_and_precision_choices():
    device, autocast = device_and_autocast("cpu", "auto")
    assert (device.type, autocast) == ("cpu", None)  # bf16 autocast only on a GPU under auto
    assert device_and_autocast("cpu", "bf16")[1] == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        device_and_autocast("cpu", "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            device_and_autocast("cuda", "auto")


def test_checkpoint_without_its_record_falls_back_to_the_run_and_else_is_refused(runs, tmp_path):
    """Checkpoints written before the record was kept: class names from the run's
    results.json, preprocessing from the datamodule's saved settings; without results.json
    the class names are unknown, which is refused by name."""
    state = torch.load(best_checkpoint(runs["cnn"]), map_location="cpu", weights_only=True)
    del state[EXPORT_RECORD_KEY]
    ckpt = tmp_path / "old" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="class names are unknown"):
        export_checkpoint(ckpt)
    results = json.loads((runs["cnn"] / RESULTS_FILE).read_text())
    (tmp_path / "old" / RESULTS_FILE).write_text(json.dumps(results))
    meta = json.loads((export_checkpoint(ckpt) / "meta.json").read_text())
    assert meta["classes"] == results["classes"] and meta["img_size"] == 32
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["test_metrics"] is None  # results.json evaluated another checkpoint file


def test_folder_labels_below_split_folders_and_images_without_a_class(tmp_path):
    for split in ("train", "test"):
        image(tmp_path / "set" / split / "a" / f"{split}.png")
    found = folder_images(tmp_path / "set", ["a", "b"])
    assert found.labels == [("a",), ("a",)] and found.labels_state.state == "scored"
    image(tmp_path / "mixed" / "a" / "1.png")
    image(tmp_path / "mixed" / "loose.png")
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    found = folder_images(tmp_path / "mixed", ["a", "b"])
    assert [Path(p).name for p in found.paths] == ["loose.png", "1.png"]
    assert found.labels == [(), ("a",)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder_images(tmp_path / "empty", ["a"])
