"""on_bad_file=skip: unreadable images leave before the splits are drawn, and the user is told."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cass_lightning.data import ImageFolderDataModule, MedicalDataModule
from cass_lightning.data.layouts import index_image_folder
from cass_lightning.data.splits import assign_splits
from data_fixtures import brain, image


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, count in counts.items():
        for i in range(count):
            image(root / name / f"{name}_{i:02d}.png", seed=i)
    return root


def _break(path: Path) -> None:
    path.write_bytes(b"not an image")


def test_bad_files_leave_before_splitting_so_no_class_vanishes_from_val(tmp_path, capsys):
    root = _tree(tmp_path / "data", {"a": 10, "b": 10})
    fractions = dict(val_fraction=0.2, test_fraction=0.2, split_seed=77)
    index = index_image_folder(root)
    drawn = assign_splits(index, 0.2, 0.2, 77)  # the splits drawn with every image present
    b_val = [k for k, s in zip(index.keys, drawn) if s == "val" and k.startswith("b/")]
    assert len(b_val) == 2
    for key in b_val:  # exactly b's validation images are unreadable
        _break(root / key)
    out = tmp_path / "run"
    dm = ImageFolderDataModule(root, img_size=8, batch_size=2, on_bad_file="skip",
                               output_dir=out, **fractions)  # fmt: skip
    dm.setup()
    val_classes = dm.index.targets[dm.split_indices("val")].tolist()
    assert val_classes.count(1) >= 1, "class b must keep validation images"
    assert sorted(len(dm.split_indices(s)) for s in ("train", "val", "test")) == [4, 4, 10]
    err = capsys.readouterr().err
    assert "left out 2 image(s)" in err and "before splitting: 2 (b 2)" in err
    report = json.loads((out / "data_report.json").read_text())
    assert report["removed"] == {
        "images": 2,
        "by_split": {"before splitting": 2},
        "by_class": {"before splitting": {"b": 2}},
    }
    assert report["warnings"] == []
    rows = {r["key"]: r["split"] for r in csv.DictReader((out / "splits.csv").open())}
    assert [rows[k] for k in b_val] == ["excluded", "excluded"] and len(rows) == 20


def test_official_test_split_losing_a_class_is_warned_and_recorded(tmp_path, capsys):
    root = brain(tmp_path / "brain", per_class=3)
    for file in (root / "Testing" / "pituitary").iterdir():
        _break(file)
    _break(root / "Training" / "glioma" / "Tr-gl_0010.jpg")
    out = tmp_path / "run"
    dm = MedicalDataModule("brain_mri", root, img_size=8, batch_size=2, val_fraction=0.0,
                           on_bad_file="skip", output_dir=out)  # fmt: skip
    with pytest.warns(UserWarning, match="class pituitary has no image in the test split"):
        dm.setup()
    err = capsys.readouterr().err
    assert "left out 4 image(s)" in err
    assert "  train: 1 (glioma 1)" in err and "  test: 3 (pituitary 3)" in err
    report = json.loads((out / "data_report.json").read_text())
    assert report["removed"]["by_class"] == {"train": {"glioma": 1}, "test": {"pituitary": 3}}
    assert len(report["warnings"]) == 1 and "pituitary" in report["warnings"][0]
    assert "WARNING: class pituitary" in dm.report.format()


def test_a_class_with_no_readable_image_is_warned(tmp_path):
    root = _tree(tmp_path / "data", {"a": 4, "b": 2})
    for file in (root / "b").iterdir():
        _break(file)
    dm = ImageFolderDataModule(root, img_size=8, batch_size=2, val_fraction=0.0,
                               test_fraction=0.0, on_bad_file="skip")  # fmt: skip
    with pytest.warns(UserWarning, match="class b has no image left at all"):
        dm.setup()
    assert dm.classes == ["a", "b"] and dm.index.class_counts().tolist() == [4, 0]


def test_missing_files_from_a_csv_are_counted_per_class(tmp_path, capsys):
    root = tmp_path / "csv"
    lines = ["path,label"]
    for i in range(6):
        if i != 5:
            image(root / f"x{i}.png", seed=i)
        lines.append(f"x{i}.png,{'yes' if i % 2 else 'no'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    dm = MedicalDataModule("csv", root, options={"csv_file": "labels.csv"}, img_size=8,
                           batch_size=2, val_fraction=0.0, test_fraction=0.0,
                           on_bad_file="skip", output_dir=tmp_path / "run")  # fmt: skip
    dm.setup()
    assert "before splitting: 1 (yes 1)" in capsys.readouterr().err
    assert dm.report.removed["images"] == 1
    assert (tmp_path / "run" / "skipped.csv").read_text().count("x5.png") == 1


def test_nothing_left_out_says_nothing(tmp_path, capsys):
    root = _tree(tmp_path / "data", {"a": 3, "b": 3})
    dm = ImageFolderDataModule(root, img_size=8, batch_size=2, on_bad_file="skip",
                               output_dir=tmp_path / "run")  # fmt: skip
    dm.setup()
    assert "left out" not in capsys.readouterr().err
    assert dm.report.removed == {"images": 0, "by_split": {}, "by_class": {}}
    assert not (tmp_path / "run" / "skipped.csv").exists()


def test_no_readable_image_at_all_is_one_clear_error(tmp_path):
    root = _tree(tmp_path / "data", {"a": 2, "b": 2})
    for file in root.rglob("*.png"):
        _break(file)
    dm = ImageFolderDataModule(root, img_size=8, batch_size=2, label_fraction=0.5,
                               on_bad_file="skip")  # fmt: skip
    with pytest.raises(ValueError, match=r"none of the 4 images under .* can be read; fix"):
        dm.setup()
