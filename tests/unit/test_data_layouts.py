"""Layout readers: tiny copies of each real distribution's on-disk layout, and their errors."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from cass_lightning.data.index import FileReader
from cass_lightning.data.layouts import (
    ISIC_CLASSES,
    ISIC_HEADER,
    LAYOUTS,
    NpzReader,
    build_index,
    index_autoimmune,
    index_brain_mri,
    index_csv,
    index_dermofit,
    index_image_folder,
    index_isic2019,
    index_medmnist,
)
from data_fixtures import (
    BRAIN_CLASSES,
    ISIC_CSV,
    ISIC_INPUT,
)
from data_fixtures import autoimmune as _autoimmune
from data_fixtures import brain as _brain
from data_fixtures import dermofit as _dermofit
from data_fixtures import image as _image
from data_fixtures import isic as _isic
from data_fixtures import isic_row as _isic_row
from data_fixtures import npz as _npz
from data_fixtures import snapshot as _snapshot


def _message(info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(info.value)


# --- ISIC-2019 -----------------------------------------------------------------------------------
def test_isic_indexes_the_csv_images_with_one_hot_classes(tmp_path: Path) -> None:
    root = _isic(tmp_path / "isic")
    index = index_isic2019(root)
    assert index.name == "isic2019"
    assert index.root == root.resolve()
    assert index.classes == list(ISIC_CLASSES)
    assert index.keys == [f"{ISIC_INPUT}/ISIC_{i:07d}.jpg" for i in range(8)]
    assert index.targets.dtype == np.int64
    assert index.targets.tolist() == list(range(8))
    assert index.splits is None and index.skipped == []
    assert isinstance(index.reader, FileReader)
    assert index.reader(index.keys[0]).mode == "RGB"
    assert not any("downsampled" in key or key.endswith(".txt") for key in index.keys)


def test_isic_blank_unk_cells_count_as_zero(tmp_path: Path) -> None:
    rows = [_isic_row("ISIC_0000000", "MEL", unk=""), _isic_row("ISIC_0000001", "NV", unk="")]
    index = index_isic2019(_isic(tmp_path, rows=rows))
    assert index.targets.tolist() == [0, 1]


def test_isic_missing_images_are_all_listed(tmp_path: Path) -> None:
    root = _isic(tmp_path)
    for i in (2, 5):
        (root / ISIC_INPUT / f"ISIC_{i:07d}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2 missing file") as info:
        index_isic2019(root)
    assert "ISIC_0000002.jpg" in _message(info) and "ISIC_0000005.jpg" in _message(info)
    assert f"{ISIC_CSV} line 4" in _message(info)  # the header is line 1


def test_isic_skip_drops_and_records_missing_images(tmp_path: Path) -> None:
    root = _isic(tmp_path)
    (root / ISIC_INPUT / "ISIC_0000002.jpg").unlink()
    index = index_isic2019(root, on_bad_file="skip")
    assert len(index) == 7
    assert f"{ISIC_INPUT}/ISIC_0000002.jpg" not in index.keys
    assert 2 not in index.targets.tolist()
    assert index.classes == list(ISIC_CLASSES)  # the label space does not shrink
    [(where, why)] = index.skipped
    assert where.endswith("ISIC_0000002.jpg") and "does not exist" in why


def test_isic_many_missing_images_are_capped_in_the_message(tmp_path: Path) -> None:
    rows = [_isic_row(f"ISIC_{i:07d}", "NV") for i in range(100, 160)]
    root = _isic(tmp_path, rows=rows)
    with pytest.raises(FileNotFoundError, match="60 missing file") as info:
        index_isic2019(root)
    assert "and 10 more" in _message(info)
    assert "ISIC_0000149.jpg" in _message(info) and "ISIC_0000150.jpg" not in _message(info)


def test_isic_rows_without_exactly_one_class_name_their_lines(tmp_path: Path) -> None:
    zero = "ISIC_0000001," + ",".join(["0.0"] * 9)
    two = "ISIC_0000002,1.0,1.0," + ",".join(["0.0"] * 7)
    root = _isic(tmp_path, rows=[_isic_row("ISIC_0000000", "MEL"), zero, two])
    with pytest.raises(ValueError, match="2 problem") as info:
        index_isic2019(root)
    text = _message(info)
    assert re.search(r"line 3 \(image ISIC_0000001\): one-hot row has 0 ones", text)
    assert re.search(r"line 4 \(image ISIC_0000002\): one-hot row has 2 ones \(MEL, NV\)", text)


def test_isic_unk_label_is_an_unknown_label(tmp_path: Path) -> None:
    unknown = "ISIC_0000003," + ",".join(["0.0"] * 8) + ",1.0"
    root = _isic(tmp_path, rows=[_isic_row("ISIC_0000000", "MEL"), unknown])
    with pytest.raises(ValueError, match=r"line 3 \(image ISIC_0000003\): unknown label"):
        index_isic2019(root, on_bad_file="skip")


def test_isic_values_other_than_zero_or_one_name_the_column(tmp_path: Path) -> None:
    half = "ISIC_0000001,0.5,0.5," + ",".join(["0.0"] * 7)
    root = _isic(tmp_path, rows=[half])
    with pytest.raises(ValueError, match=r"line 2 \(image ISIC_0000001\): column MEL is '0.5'"):
        index_isic2019(root)


def test_isic_missing_columns_show_expected_and_found_header(tmp_path: Path) -> None:
    header = "image,MEL,BCC,AK,BKL,DF,VASC,SCC,UNK"
    root = _isic(tmp_path, rows=["ISIC_0000000,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0"], header=header)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['NV'\]") as info:
        index_isic2019(root)
    assert "expected header " + ",".join(ISIC_HEADER) in _message(info)
    assert "found header " + header in _message(info)


def test_isic_wrong_root_lists_expected_and_found(tmp_path: Path) -> None:
    _brain(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=f"{ISIC_INPUT}/ and {ISIC_CSV} not found") as info:
        index_isic2019(tmp_path)
    text = _message(info)
    assert f"Expected {ISIC_INPUT}/ (holding <image>.jpg) and {ISIC_CSV}" in text
    assert "found there: Testing/, Training/, notes.txt" in text


def test_isic_root_one_level_too_high_suggests_the_right_one(tmp_path: Path) -> None:
    _isic(tmp_path / "ISIC2019")
    with pytest.raises(ValueError, match=re.escape(f"Did you mean root={tmp_path / 'ISIC2019'}")):
        index_isic2019(tmp_path)


# --- Brain tumour MRI ----------------------------------------------------------------------------
def test_brain_mri_official_splits_and_grayscale_reads_as_rgb(tmp_path: Path) -> None:
    root = _brain(tmp_path)
    (root / "Training" / "glioma" / ".DS_Store").write_text("x")
    _image(root / "Training" / "__MACOSX" / "._Tr-gl_0010.jpg")  # left by macOS zip archives
    index = index_brain_mri(root)
    assert index.classes == BRAIN_CLASSES
    assert len(index) == 16
    assert "Testing/notumor/Te-no_0010.jpg" in index.keys
    assert "Training/glioma/Tr-gl_0010.jpg" in index.keys
    assert index.keys == sorted(index.keys)
    for key, target, split in zip(index.keys, index.targets, index.splits):
        assert split == ("train" if key.startswith("Training/") else "test")
        assert BRAIN_CLASSES[target] == key.split("/")[1]
    image = index.reader("Training/pituitary/Tr-pi_0011.jpg")
    assert image.mode == "RGB" and image.size == (12, 16)


def test_brain_mri_class_sets_must_agree(tmp_path: Path) -> None:
    root = _brain(tmp_path)
    for file in (root / "Testing" / "pituitary").iterdir():
        file.unlink()
    (root / "Testing" / "pituitary").rmdir()
    with pytest.raises(ValueError, match=r"Training/ has \[.*'pituitary'\]; Testing/ has \[.*"):
        index_brain_mri(root)


def test_brain_mri_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = _brain(tmp_path)
    for file in (root / "Testing" / "pituitary").iterdir():
        file.unlink()
    with pytest.raises(
        ValueError, match=r"class folder\(s\) \['Testing/pituitary/'\] under .* hold no images"
    ):
        index_brain_mri(root)


def test_brain_mri_without_testing_folder_says_what_is_expected(tmp_path: Path) -> None:
    root = _brain(tmp_path)
    for file in sorted((root / "Testing").rglob("*"), reverse=True):
        file.rmdir() if file.is_dir() else file.unlink()
    (root / "Testing").rmdir()
    with pytest.raises(ValueError, match="Testing/ not found") as info:
        index_brain_mri(root)
    assert "Expected Training/<class>/<image>.jpg and Testing/<class>/<image>.jpg" in _message(info)
    assert "found there: Training/." in _message(info)


def test_brain_mri_broken_link_follows_the_bad_file_policy(tmp_path: Path) -> None:
    root = _brain(tmp_path)
    link = root / "Training" / "glioma" / "Tr-gl_0099.jpg"
    link.symlink_to(root / "gone.jpg")
    with pytest.raises(FileNotFoundError, match=r"Tr-gl_0099\.jpg: broken symbolic link"):
        index_brain_mri(root)
    index = index_brain_mri(root, on_bad_file="skip")
    assert len(index) == 16
    assert index.skipped == [(str(link), "broken symbolic link")]


# --- Dermofit ------------------------------------------------------------------------------------
def test_dermofit_lesion_images_without_masks(tmp_path: Path) -> None:
    root = _dermofit(tmp_path)
    index = index_dermofit(root)
    assert index.classes == ["AK", "BCC", "MEL"]
    assert index.keys == ["AK/A5/A5.png", "BCC/B123/B123.png", "BCC/B124/B124.png", "MEL/M1/M1.png"]
    assert index.targets.tolist() == [0, 1, 1, 2]
    assert index.splits is None
    assert not any("mask" in key for key in index.keys)


def test_dermofit_lesion_with_only_a_mask_is_a_missing_file(tmp_path: Path) -> None:
    root = _dermofit(tmp_path)
    _image(root / "BCC" / "B125" / "B125mask.png", mode="L")
    with pytest.raises(FileNotFoundError, match=r"BCC/B125/ has no B125\.png \(found: B125mask"):
        index_dermofit(root)
    index = index_dermofit(root, on_bad_file="skip")
    assert "BCC/B125/B125mask.png" not in index.keys and len(index) == 4
    [(where, _)] = index.skipped
    assert where == str(root.resolve() / "BCC" / "B125" / "B125.png")


def test_dermofit_class_without_lesions_is_named(tmp_path: Path) -> None:
    root = _dermofit(tmp_path)
    (root / "SCC").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['SCC/'\]"):
        index_dermofit(root)


# --- Autoimmune ----------------------------------------------------------------------------------
def test_autoimmune_list_literals_and_separated_labels(tmp_path: Path) -> None:
    root = _autoimmune(tmp_path)
    index = index_autoimmune(root)
    assert index.name == "autoimmune"
    assert index.classes == ["DM", "IBM", "NORMAL", "PM"]
    assert index.keys == [f"b00{i}.png" for i in range(1, 6)]
    assert index.targets.dtype == np.float32 and index.multi_label
    expected = [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 1]]
    assert index.targets.tolist() == expected
    assert index.splits is None


def test_autoimmune_images_in_a_sub_folder(tmp_path: Path) -> None:
    root = _autoimmune(tmp_path, image_dir="images")
    index = index_autoimmune(root, image_dir="images")
    assert index.keys[0] == "images/b001.png"
    assert index.reader(index.keys[0]).mode == "RGB"


def test_autoimmune_missing_file_error_and_skip(tmp_path: Path) -> None:
    root = _autoimmune(tmp_path)
    (root / "b002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b002\.png: file does not exist \(listed at"):
        index_autoimmune(root)
    index = index_autoimmune(root, on_bad_file="skip")
    assert "b002.png" not in index.keys and len(index) == 4
    assert index.classes == ["DM", "IBM", "NORMAL", "PM"]
    assert index.skipped[0][0].endswith("b002.png")


def test_autoimmune_missing_label_column_shows_headers(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("file,labels\nb001.png,[]\n")
    with pytest.raises(
        ValueError, match=r"missing column\(s\) \['label'\].*found header file,labels"
    ):
        index_autoimmune(tmp_path)


def test_autoimmune_unreadable_label_list_names_the_line(tmp_path: Path) -> None:
    root = _autoimmune(tmp_path, rows=[("b001.png", "['DM'"), ("b002.png", "['PM']")])
    with pytest.raises(ValueError, match=r"line 2 \(b001\.png\): column 'label'"):
        index_autoimmune(root)


# --- Generic CSV ---------------------------------------------------------------------------------
def _csv_root(root: Path, lines: list[str], files: list[str]) -> Path:
    for i, file in enumerate(files):
        _image(root / "img" / file, seed=i)
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_csv_labels_splits_and_numeric_class_order(tmp_path: Path) -> None:
    lines = ["path,label,split", "a.png,10,train", "b.png,2,val", "c.png,2,TEST"]
    root = _csv_root(tmp_path, lines, ["a.png", "b.png", "c.png"])
    index = index_csv(root, csv_file="data.csv", image_dir="img", split_column="split")
    assert index.name == "csv"
    assert index.classes == ["2", "10"]
    assert index.keys == ["img/a.png", "img/b.png", "img/c.png"]
    assert index.targets.tolist() == [1, 0, 0]
    assert index.splits.tolist() == ["train", "val", "test"]


def test_csv_unknown_label_names_row_and_label(tmp_path: Path) -> None:
    lines = ["path,label", "a.png,cat", "b.png,cow"]
    root = _csv_root(tmp_path, lines, ["a.png", "b.png"])
    with pytest.raises(ValueError, match=r"line 3 \(b\.png\): unknown label\(s\) \['cow'\]"):
        index_csv(root, csv_file="data.csv", image_dir="img", classes=["dog", "cat"])
    index = index_csv(root, csv_file="data.csv", image_dir="img", classes=["dog", "cat", "cow"])
    assert index.classes == ["dog", "cat", "cow"] and index.targets.tolist() == [1, 2]


def test_csv_bad_split_and_empty_label_name_their_rows(tmp_path: Path) -> None:
    lines = ["path,label,split", "a.png,cat,training", "b.png,,train"]
    root = _csv_root(tmp_path, lines, ["a.png", "b.png"])
    with pytest.raises(ValueError, match="2 problem") as info:
        index_csv(root, csv_file="data.csv", image_dir="img", split_column="split")
    assert "line 2 (a.png): split 'training' in column 'split'" in _message(info)
    assert "line 3 (b.png): empty 'label' cell" in _message(info)


def test_csv_multi_label_separator_and_empty_cells(tmp_path: Path) -> None:
    lines = ["path,label", "a.png,x/y", "b.png,", "c.png,\"['y']\""]
    root = _csv_root(tmp_path, lines, ["a.png", "b.png", "c.png"])
    index = index_csv(
        root, csv_file="data.csv", image_dir="img", multi_label=True, label_separator="/"
    )
    assert index.classes == ["x", "y"]
    assert index.targets.tolist() == [[1, 1], [0, 0], [0, 1]]


def test_csv_absolute_paths_and_duplicates(tmp_path: Path) -> None:
    outside = _image(tmp_path / "elsewhere" / "z.png")
    lines = ["path,label", f"{outside},a", "a.png,b"]
    root = _csv_root(tmp_path / "root", lines, ["a.png"])
    with pytest.raises(ValueError, match=r"line 2: .* leaves the dataset root"):
        index_csv(root, csv_file="data.csv", image_dir="img")
    index = index_csv(root, csv_file="data.csv", image_dir="img", allow_outside_root=True)
    assert str(outside.resolve()) in index.keys
    assert index.reader(str(outside.resolve())).mode == "RGB"
    (root / "data.csv").write_text("path,label\na.png,a\n./a.png,b\n")
    with pytest.raises(ValueError, match=r"line 3 \(\./a\.png\): listed again \(first at line 2\)"):
        index_csv(root, csv_file="data.csv", image_dir="img")


def test_csv_missing_file_is_listed_with_its_line(tmp_path: Path) -> None:
    root = _csv_root(tmp_path, ["path,label", "a.png,cat", "gone.png,dog"], ["a.png"])
    with pytest.raises(FileNotFoundError, match=r"gone\.png: file does not exist .*line 3"):
        index_csv(root, csv_file="data.csv", image_dir="img")


# --- Image folders -------------------------------------------------------------------------------
def test_image_folder_flat_classes_without_splits(tmp_path: Path) -> None:
    _image(tmp_path / "b" / "one.PNG")
    _image(tmp_path / "b" / "deeper" / "two.jpeg")
    _image(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("x")
    _image(tmp_path / "a" / ".hidden.png")
    index = index_image_folder(tmp_path)
    assert index.classes == ["a", "b"]
    assert index.keys == ["a/x.png", "b/deeper/two.jpeg", "b/one.PNG"]
    assert index.targets.tolist() == [0, 1, 1] and index.splits is None


def test_image_folder_official_split_folders(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        for cls in ("cat", "dog"):
            _image(tmp_path / split / cls / f"{split}_{cls}.png")
    index = index_image_folder(tmp_path)
    assert index.classes == ["cat", "dog"]
    assert dict(zip(index.keys, index.splits)) == {
        f"{s}/{c}/{s}_{c}.png": s for s in ("train", "val", "test") for c in ("cat", "dog")
    }


def test_image_folder_split_class_sets_must_match(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "cat" / "a.png")
    _image(tmp_path / "train" / "dog" / "a.png")
    _image(tmp_path / "val" / "cat" / "a.png")
    with pytest.raises(ValueError, match=r"train/ has \['cat', 'dog'\]; val/ has \['cat'\]"):
        index_image_folder(tmp_path)


def test_image_folder_empty_classes_in_a_split_are_named(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        _image(tmp_path / "train" / cls / "a.png")
        (tmp_path / "val" / cls).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"\['val/cat/', 'val/dog/'\] under .* hold no images"):
        index_image_folder(tmp_path)


def test_image_folder_split_folders_need_train(tmp_path: Path) -> None:
    _image(tmp_path / "val" / "cat" / "a.png")
    with pytest.raises(ValueError, match=r"split folder\(s\) \['val'\] but no train/"):
        index_image_folder(tmp_path)


def test_image_folder_class_without_images_is_named(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['b/'\] under .* hold no images"):
        index_image_folder(tmp_path)


# --- MedMNIST ------------------------------------------------------------------------------------
def test_medmnist_grayscale_keys_splits_and_reader(tmp_path: Path) -> None:
    path = _npz(tmp_path, "pneumoniamnist.npz")
    index = index_medmnist(tmp_path, name="pneumoniamnist")
    assert index.name == "medmnist" and index.root == tmp_path.resolve()
    assert len(index) == 9
    assert index.keys[:3] == ["test/000000", "test/000001", "test/000002"]
    assert index.keys == sorted(index.keys)
    assert index.splits.tolist().count("train") == 4 and index.splits.tolist().count("val") == 2
    assert index.classes == ["0", "1", "2"] and index.targets.dtype == np.int64
    assert index.targets[index.keys.index("train/000002")] == 2
    image = index.reader("train/000001")
    with np.load(path) as arrays:
        expected = arrays["train_images"][1]
    assert image.mode == "RGB" and image.size == (8, 8)
    assert np.array_equal(np.asarray(image), np.repeat(expected[..., None], 3, axis=2))
    assert index.reader.describe("train/000001") == "pneumoniamnist.npz[train][1]"


def test_medmnist_rgb_size_suffix_and_class_names(tmp_path: Path) -> None:
    path = _npz(tmp_path, "dermamnist_64.npz", rgb=True)
    index = index_medmnist(tmp_path, name="dermamnist", size=64, class_names=["a", "b", "c"])
    assert index.classes == ["a", "b", "c"]
    with np.load(path) as arrays:
        expected = arrays["val_images"][1]
    assert np.array_equal(np.asarray(index.reader("val/000001")), expected)
    assert index.reader.describe("val/000001") == "dermamnist_64.npz[val][1]"
    with pytest.raises(ValueError, match=r"class_names has 2 names but .*dermamnist_64\.npz"):
        index_medmnist(tmp_path, name="dermamnist", size=64, class_names=["a", "b"])


def test_medmnist_multi_label_targets(tmp_path: Path) -> None:
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=np.uint8)
    _npz(tmp_path, "chestmnist.npz", labels=labels)
    index = index_medmnist(tmp_path, name="chestmnist")
    assert index.multi_label and index.targets.dtype == np.float32
    assert index.targets.shape == (9, 3) and index.classes == ["0", "1", "2"]
    assert index.targets[index.keys.index("train/000003")].tolist() == [1, 1, 1]


def test_medmnist_missing_file_lists_present_archives(tmp_path: Path) -> None:
    _npz(tmp_path, "pathmnist_64.npz")
    _npz(tmp_path, "bloodmnist.npz")
    with pytest.raises(FileNotFoundError, match=r"dermamnist_128\.npz not found") as info:
        index_medmnist(tmp_path, name="dermamnist", size=128)
    assert "['bloodmnist.npz', 'pathmnist_64.npz']" in _message(info)


def test_medmnist_missing_array_names_key_and_file(tmp_path: Path) -> None:
    _npz(tmp_path, "organamnist.npz", val_labels=True)
    with pytest.raises(ValueError, match=r"organamnist\.npz has no array\(s\) \['val_labels'\]"):
        index_medmnist(tmp_path, name="organamnist")


def test_medmnist_reader_pickles_and_fingerprints_the_file(tmp_path: Path) -> None:
    path = _npz(tmp_path, "pneumoniamnist.npz")
    reader = index_medmnist(tmp_path, name="pneumoniamnist").reader
    assert isinstance(reader, NpzReader)
    clone = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(np.asarray(clone("test/000002")), np.asarray(reader("test/000002")))
    before = reader.fingerprint("test/000002")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert reader.fingerprint("test/000002") != before
    with pytest.raises(KeyError, match="train/000004"):
        reader("train/000004")


# --- build_index: names, roots, and never writing ----------------------------------------------
REQUIRED: dict[str, dict[str, object]] = {
    "csv": {"csv_file": "data.csv"},
    "medmnist": {"name": "dermamnist"},
}
FILE_LAYOUTS = [name for name in LAYOUTS if name != "synthetic"]


def test_build_index_unknown_layout_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown layout 'isic'; known layouts: autoimmune, "):
        build_index("isic", "/nowhere")


def test_build_index_unknown_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['csv_path'\]"):
        build_index("csv", tmp_path, csv_path="x.csv")
    with pytest.raises(ValueError, match=r"'medmnist' needs option\(s\) \['name'\]"):
        build_index("medmnist", tmp_path)


@pytest.mark.parametrize("layout", FILE_LAYOUTS)
def test_build_index_missing_root_is_named(tmp_path: Path, layout: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"root {missing} does not exist")):
        build_index(layout, missing, **REQUIRED.get(layout, {}))


@pytest.mark.parametrize("layout", FILE_LAYOUTS)
def test_build_index_empty_root_says_empty(tmp_path: Path, layout: str) -> None:
    (tmp_path / ".DS_Store").write_text("x")
    with pytest.raises(
        ValueError, match=re.escape(f"root {tmp_path.resolve()} is empty; expected")
    ):
        build_index(layout, tmp_path, **REQUIRED.get(layout, {}))


@pytest.mark.parametrize("layout", FILE_LAYOUTS)
def test_build_index_wrong_root_lists_expected_and_found(tmp_path: Path, layout: str) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("x")
    error = FileNotFoundError if layout == "medmnist" else ValueError
    with pytest.raises(error, match=r"[Ee]xpected") as info:
        build_index(layout, tmp_path, **REQUIRED.get(layout, {}))
    text = _message(info)
    assert str(tmp_path.resolve()) in text
    if layout == "medmnist":
        assert ".npz files in" in text
    else:
        assert "found there: notes.txt, stuff/." in text


def test_build_index_passes_options_through(tmp_path: Path) -> None:
    _autoimmune(tmp_path)
    index = build_index("autoimmune", tmp_path, on_bad_file="skip", csv_file="labels.csv")
    assert index.name == "autoimmune" and len(index) == 5


def test_bad_file_policy_is_checked(tmp_path: Path) -> None:
    _dermofit(tmp_path)
    with pytest.raises(ValueError, match="on_bad_file must be one of"):
        build_index("dermofit", tmp_path, on_bad_file="ignore")


def test_synthetic_via_build_index_has_six_classes_and_train_val(tmp_path: Path) -> None:
    options = {"images_per_class": 2, "val_images_per_class": 1, "image_size": 8}
    index = build_index("synthetic", tmp_path / "data", **options)
    assert index.name == "synthetic" and index.num_classes == 6
    assert sorted(set(index.splits)) == ["train", "val"]
    assert len(index) == 18
    assert index.root.name.startswith("synthetic-") and index.root.parent == tmp_path / "data"
    again = build_index("synthetic", tmp_path / "data", **options)
    assert again.keys == index.keys


BUILDERS: dict[str, tuple[Callable[[Path], object], dict[str, object]]] = {
    "isic2019": (_isic, {}),
    "brain_mri": (_brain, {}),
    "dermofit": (_dermofit, {}),
    "autoimmune": (_autoimmune, {}),
    "csv": (
        lambda r: _csv_root(r, ["path,label", "a.png,x"], ["a.png"]),
        {**REQUIRED["csv"], "image_dir": "img"},
    ),
    "image_folder": (_brain, {}),
    "medmnist": (lambda r: _npz(r, "dermamnist.npz"), REQUIRED["medmnist"]),
}


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_indexing_and_reading_never_write_under_the_root(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "dataset"
    root.mkdir()
    build, options = BUILDERS[layout]
    build(root)
    os.utime(root, ns=(1_000_000_000, 1_000_000_000))
    before = _snapshot(root)
    index = build_index(layout, root, on_bad_file="skip", **options)
    for key in index.keys:
        index.reader(key)
        index.reader.fingerprint(key)
    assert _snapshot(root) == before
