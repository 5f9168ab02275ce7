"""Data checks that tell the truth: the header check, every Pillow format, missing-value labels,
classes too small for the evaluation splits, formula-like names in CSVs and image bombs."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cass_lightning.apps.run.console import refusal_message
from cass_lightning.data import ImageFolderDataModule
from cass_lightning.data.cache import build_cache
from cass_lightning.data.index import IMAGE_EXTENSIONS, FileReader, ImageTooLarge, load_rgb
from cass_lightning.data.layouts import build_index
from cass_lightning.data.validate import probe_images
from cass_lightning.modules.metrics import f1_macro_scope
from data_fixtures import image, snapshot


def _make_dm(root: Path, **kwargs) -> ImageFolderDataModule:
    defaults = dict(img_size=16, batch_size=2, check_images="header")
    return ImageFolderDataModule(root, **{**defaults, **kwargs})


def _report(out: Path) -> dict:
    return json.loads((out / "data_report.json").read_text())


def _mixed_set(root: Path, per_class: int = 11) -> Path:
    """PNG and JPEG images in two classes (``per_class`` of each format per class)."""
    for c, name in enumerate(("a", "b")):
        for i in range(per_class):
            image(root / name / f"p{i:02d}.png", size=(12 + i % 3, 10), seed=c * 100 + i)
            image(root / name / f"j{i:02d}.jpg", size=(16, 12 + i % 2), seed=c * 100 + 50 + i)
    return root


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _bomb_png(path: Path, width: int = 50_000, height: int = 50_000) -> Path:
    """A PNG whose header claims ``width x height`` 1-bit pixels, a few dozen bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    return path


# ----------------------------------------------------------------------------- header check
def test_header_check_accepts_every_clean_png_and_jpeg(tmp_path):
    root = _mixed_set(tmp_path / "data")
    out = tmp_path / "run"
    dm = _make_dm(root, on_bad_file="skip", output_dir=out)
    dm.setup()
    report = _report(out)
    assert len(dm.index) == 44 and report["bad_files"] == [] and report["removed"]["images"] == 0
    assert not (out / "skipped.csv").exists()
    sizes = probe_images(dm.index.reader, dm.index.keys, "header")
    assert all(why is None for _, why in sizes)
    assert {size for size, _ in sizes} == {(12, 10), (13, 10), (14, 10), (16, 12), (16, 13)}


def test_header_check_refuses_truncated_and_corrupt_png_and_jpeg(tmp_path):
    root = _mixed_set(tmp_path / "data", per_class=3)
    _cut(root / "a" / "p00.png")
    _cut(root / "a" / "j00.jpg")  # cut inside the compressed data: its header is intact
    garbled = root / "b" / "j01.jpg"
    data = garbled.read_bytes()
    garbled.write_bytes(data[:20] + b"\x00" * 60 + data[80:])
    (root / "b" / "p01.png").write_text("<html>not an image</html>")
    bad = {"a/p00.png", "a/j00.jpg", "b/j01.jpg", "b/p01.png"}
    before = snapshot(root)
    with pytest.raises(ValueError, match="4 unreadable image") as refused:
        _make_dm(root).setup()
    for key in bad:
        assert str(root.resolve() / key) in str(refused.value)
    out = tmp_path / "run"
    dm = _make_dm(root, on_bad_file="skip", output_dir=out)
    dm.setup()
    assert len(dm.index) == 8 and not bad & set(dm.index.keys)
    assert _report(out)["removed"]["images"] == 4
    listed = {Path(row["file"]).relative_to(root.resolve()).as_posix()
              for row in csv.DictReader((out / "skipped.csv").open())}  # fmt: skip
    assert listed == bad
    assert snapshot(root) == before  # refused or skipped, the dataset itself is left as it was


def test_header_check_never_decodes_a_png(tmp_path, monkeypatch):
    from PIL import PngImagePlugin

    from cass_lightning.data.validate import header_size

    path = image(tmp_path / "x.png", size=(14, 9))
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: shown 9 wide, 14 high
    Image.open(path).save(tmp_path / "turned.png", exif=exif)

    class Decoded(BaseException):  # not an Exception: no handler on the way may swallow it
        pass

    def refuse(self):
        raise Decoded

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)
    assert header_size(path) == (14, 9)
    assert header_size(tmp_path / "turned.png") == (9, 14)


# ----------------------------------------------------------------------------- formats
def test_every_pillow_format_is_indexed_and_other_files_are_counted(tmp_path):
    assert {".webp", ".gif", ".png", ".jpg", ".tiff", ".bmp"} <= set(IMAGE_EXTENSIONS)
    root = tmp_path / "data"
    for i in range(3):
        image(root / "a" / f"x{i}.webp", seed=i)
        image(root / "b" / f"y{i}.png", seed=10 + i)
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "a" / "notes.txt").write_text("x")
    (root / "b" / "table.CSV").write_text("x")
    (root / "b" / "README").write_text("x")
    (root / "b" / "other.txt").write_text("x")
    out = tmp_path / "run"
    dm = _make_dm(root, check_images="full", output_dir=out)
    dm.setup()
    assert sorted(dm.index.keys) == sorted(
        ["a/x0.webp", "a/x1.webp", "a/x2.webp", "b/anim.gif", "b/y0.png", "b/y1.png", "b/y2.png"]
    )
    ignored = _report(out)["ignored_files_by_extension"]
    assert ignored == {"(no extension)": 1, ".csv": 1, ".txt": 2}
    assert "ignored 4 file(s) that are not images" in dm.report.format()
    first = np.asarray(load_rgb(root / "b" / "anim.gif"))
    assert first.shape == (10, 12, 3) and tuple(first[0, 0]) == (255, 0, 0)  # the first frame


def test_csv_layout_reads_webp_and_gif(tmp_path):
    root = tmp_path / "data"
    image(root / "i" / "a.webp")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "i" / "b.gif")
    (root / "labels.csv").write_text("path,label\ni/a.webp,x\ni/b.gif,y\n")
    index = build_index("csv", root, csv_file="labels.csv")
    assert index.keys == ["i/a.webp", "i/b.gif"]
    assert [why for _, why in probe_images(index.reader, index.keys, "full")] == [None, None]


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize("missing", ["nan", "NaN", "None", "  "])
def test_missing_value_labels_are_refused_with_their_line(tmp_path, missing):
    root = tmp_path / "data"
    for name in ("a", "b", "c"):
        image(root / f"{name}.png")
    (root / "labels.csv").write_text(f"path,label\na.png,x\nb.png,{missing}\nc.png,y\n")
    with pytest.raises(ValueError, match="line 3") as refused:
        build_index("csv", root, csv_file="labels.csv")
    assert "b.png" in str(refused.value)


def test_missing_value_labels_are_refused_in_multi_label_and_class_lists(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        image(root / f"{name}.png")
    (root / "labels.csv").write_text("path,label\na.png,x|y\nb.png,x|nan\n")
    with pytest.raises(ValueError, match=r"line 3 \(b.png\): label 'nan'"):
        build_index("csv", root, csv_file="labels.csv", multi_label=True)
    (root / "auto.csv").write_text("file,label\na.png,\"['x', 'NaN']\"\nb.png,[]\n")
    with pytest.raises(ValueError, match=r"line 2 \(a.png\): label 'NaN'"):
        build_index("autoimmune", root, csv_file="auto.csv")
    with pytest.raises(ValueError, match="missing-value name"):
        build_index("csv", root, csv_file="labels.csv", classes=["x", "None"])


def test_isic_rows_with_nan_or_empty_one_hot_cells_are_refused(tmp_path):
    from data_fixtures import isic, isic_row

    rows = [isic_row(f"ISIC_{i:07d}", "MEL") for i in range(8)]
    rows[2] = rows[2].replace("1.0", "nan", 1)
    rows[4] = rows[4].replace("0.0", "", 1)
    with pytest.raises(ValueError, match="2 problem") as refused:
        build_index("isic2019", isic(tmp_path / "isic", rows))
    assert "line 4" in str(refused.value) and "line 6" in str(refused.value)


@pytest.mark.parametrize("name", ["nan", "None", " "])
def test_class_folders_named_like_a_missing_value_are_refused(tmp_path, name):
    root = tmp_path / "data"
    image(root / "a" / "x.png")
    image(root / name / "y.png")
    with pytest.raises(ValueError, match="missing-value name") as refused:
        build_index("image_folder", root)
    assert repr(f"{name}/") in str(refused.value)


# ----------------------------------------------------------------------------- small classes
def test_a_class_too_small_for_val_and_test_is_warned_about_and_recorded(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        image(root / "a" / f"{i}.png", seed=i)
        image(root / "b" / f"{i}.png", seed=20 + i)
    image(root / "rare" / "only.png", seed=99)
    out = tmp_path / "run"
    dm = _make_dm(root, output_dir=out, val_fraction=0.2, test_fraction=0.2)
    with pytest.warns(UserWarning, match=r"class rare has no image in the test split \(1 image"):
        dm.setup()
    report = _report(out)
    assert report["classes_missing_from_splits"] == {"val": ["rare"], "test": ["rare"]}
    assert sum("class rare" in w for w in report["warnings"]) == 2
    assert all("macro-F1 is over the other classes" in w for w in report["warnings"])


def test_a_multi_label_class_missing_from_test_is_said_to_count_as_zero(tmp_path):
    from cass_lightning.data import MedicalDataModule
    from data_fixtures import autoimmune

    rows = [(f"b{i:02d}.png", "['a']" if i % 2 else "['b']") for i in range(20)]
    rows.append(("rare.png", "['a', 'rare']"))
    root = autoimmune(tmp_path / "auto", rows=rows)
    out = tmp_path / "run"
    dm = MedicalDataModule("autoimmune", root, img_size=16, batch_size=2, output_dir=out,
                           val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    with pytest.warns(UserWarning, match="test macro-F1 counts it as 0"):
        dm.setup()
    assert _report(out)["classes_missing_from_splits"] == {"val": ["rare"], "test": ["rare"]}


def test_no_small_class_warning_when_every_class_reaches_every_split(tmp_path):
    root = tmp_path / "data"
    for i in range(10):
        image(root / "a" / f"{i}.png", seed=i)
        image(root / "b" / f"{i}.png", seed=20 + i)
    out = tmp_path / "run"
    _make_dm(root, output_dir=out, val_fraction=0.2, test_fraction=0.2).setup()
    assert _report(out)["classes_missing_from_splits"] == {}
    assert _report(out)["warnings"] == []


def test_f1_macro_scope_names_the_classes_averaged():
    per_class = {"f1": [0.8, None, 0.0], "support": [3, 0, 0]}
    assert f1_macro_scope(per_class, ["a", "rare", "c"], multi_label=False) == {
        "f1_macro_classes": ["a", "c"],
        "f1_macro_left_out": ["rare"],
        "f1_macro_over": "2 of 3 classes",
    }
    # torchmetrics' multi-label macro F1 keeps a label never present nor predicted (as 0).
    assert f1_macro_scope(per_class, ["a", "b", "c"], multi_label=True)["f1_macro_over"] == (
        "3 of 3 classes"
    )
    assert f1_macro_scope(None, ["a"], multi_label=False)["f1_macro_classes"] is None


# ----------------------------------------------------------------------------- formula cells
FORMULA_NAMES = ['=HYPERLINK("x")', "=cmd|' -C calc'!A0", "@x", "+1"]


def test_formula_like_class_names_are_text_in_splits_csv_and_unchanged_for_training(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(FORMULA_NAMES):
        for i in range(4):
            image(root / name / f"{i}.png", seed=10 * c + i)
    (root / "@x" / "3.png").write_bytes(b"not an image")
    out = tmp_path / "run"
    dm = _make_dm(root, output_dir=out, on_bad_file="skip")
    dm.setup()
    assert dm.classes == sorted(FORMULA_NAMES)
    rows = list(csv.DictReader((out / "splits.csv").open()))
    assert {row["label"] for row in rows} == {"'" + name for name in FORMULA_NAMES}
    assert all(row["key"].startswith("'") for row in rows)
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert len(skipped) == 1 and skipped[0]["file"].endswith("@x/3.png")


def test_formula_like_csv_labels_are_text_in_splits_csv(tmp_path):
    from cass_lightning.data.splits import write_split_csv

    root = tmp_path / "data"
    lines = ["path,label"]
    for i, name in enumerate(FORMULA_NAMES):
        image(root / f"{i}.png", seed=i)
        lines.append(f'{i}.png,"{name.replace(chr(34), chr(34) * 2)}"')
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    index = build_index("csv", root, csv_file="labels.csv")
    assert index.classes == sorted(FORMULA_NAMES)
    path = write_split_csv(index, np.array(["train"] * 4), np.arange(4), tmp_path / "s.csv", 0)
    labels = [row["label"] for row in csv.DictReader(path.open())]
    assert labels == ["'" + name for name in FORMULA_NAMES]


# ----------------------------------------------------------------------------- image bombs
def test_a_huge_header_png_is_a_named_error_with_checks_off(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        image(root / "a" / f"{i}.png", seed=i)
        image(root / "b" / f"{i}.png", seed=10 + i)
    bomb = _bomb_png(root / "b" / "bomb.png")
    assert bomb.stat().st_size < 200
    dm = _make_dm(root, check_images="none", val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    dataset = dm.dataset(np.arange(len(dm.index)), train=False)
    at = dm.index.keys.index("b/bomb.png")
    with pytest.raises(ImageTooLarge) as refused:
        dataset[at]
    limit = Image.MAX_IMAGE_PIXELS
    expected = (
        f"image too large: {bomb.resolve()} (50000 x 50000 pixels, over the limit of {limit})"
    )
    assert str(refused.value).startswith(expected)
    assert refusal_message(refused.value).startswith("image too large:")  # exit 1, one line


@pytest.mark.parametrize("level", ["full", "header"])
def test_a_huge_header_png_is_counted_as_bad_when_checked(tmp_path, level):
    root = tmp_path / "data"
    for i in range(3):
        image(root / "a" / f"{i}.png", seed=i)
        image(root / "b" / f"{i}.png", seed=10 + i)
    _bomb_png(root / "b" / "bomb.png")
    before = snapshot(root)
    out = tmp_path / "run"
    dm = _make_dm(root, check_images=level, on_bad_file="skip", output_dir=out)
    dm.setup()
    assert "b/bomb.png" not in dm.index.keys and snapshot(root) == before
    (entry,) = _report(out)["bad_files"]
    assert entry["file"].endswith("bomb.png")
    assert entry["reason"].startswith("image too large (50000 x 50000 pixels, over the limit")


def test_over_the_limit_but_under_twice_it_is_refused_too_and_the_cache_skips_it(
    tmp_path, monkeypatch
):
    root = tmp_path / "data"
    for i in range(3):
        image(root / "a" / f"{i}.png", size=(8, 8), seed=i)
        image(root / "b" / f"{i}.png", size=(8, 8), seed=10 + i)
    image(root / "b" / "large.png", size=(12, 10))  # 120 pixels: over 100, under 200
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLarge, match=r"\(12 x 10 pixels, over the limit of 100\)"):
        load_rgb(root / "b" / "large.png")
    index = build_index("image_folder", root)
    cache = build_cache(index, tmp_path / "cache", 8, on_bad_file="skip")
    assert list(cache.bad) == ["b/large.png"] and "image too large" in cache.bad["b/large.png"]
    probes = probe_images(FileReader(index.root), index.keys, "header")
    assert [key for key, (_, why) in zip(index.keys, probes) if why] == ["b/large.png"]


def test_results_say_over_which_classes_the_test_macro_f1_was_averaged():
    import torch

    from cass_lightning.modules.classifier import ClassifierModule

    model = ClassifierModule(
        arm="cnn", init="random", timm_name="resnet10t", img_size=32, num_classes=3
    )
    targets = torch.tensor([0, 0, 2, 2])  # class "rare" is neither in the split nor predicted
    logits = torch.full((4, 3), -3.0)
    logits[torch.arange(4), torch.tensor([0, 2, 2, 2])] = 3.0
    model.test_per_class.update(logits, targets)
    model.test_metrics.update(logits, targets)
    model.test_breakdown = model.test_per_class.compute()
    found = model.per_class_results(["a", "rare", "c"], label_seed=0)
    assert found["f1_macro_classes"] == ["a", "c"] and found["f1_macro_left_out"] == ["rare"]
    assert found["f1_macro_over"] == "2 of 3 classes"
    f1 = [v for v in found["per_class"]["f1"] if v is not None]
    assert float(model.test_metrics.compute()["f1_macro"]) == pytest.approx(sum(f1) / len(f1))


@pytest.mark.parametrize("workers", [0, 1])
def test_pretraining_over_an_image_bomb_with_checks_off_stops_with_one_named_line(
    tmp_path, tiny_kwargs, workers
):
    import lightning as L

    from cass_lightning import CASSModule

    root = tmp_path / "data"
    for i in range(2):
        image(root / "a" / f"{i}.png", seed=i)
    bomb = _bomb_png(root / "a" / "bomb.png")
    dm = _make_dm(root, check_images="none", val_fraction=0.0, test_fraction=0.0, batch_size=3,
                  num_workers=workers, persistent_workers=False, img_size=32)  # fmt: skip
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ImageTooLarge) as refused:
        trainer.fit(CASSModule(**tiny_kwargs), datamodule=dm)
    message = refusal_message(refused.value)
    assert message.startswith(f"image too large: {bomb.resolve()} (50000 x 50000 pixels")
    assert "\n" not in message and "Traceback" not in message
