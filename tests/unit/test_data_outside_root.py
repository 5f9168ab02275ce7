"""Paths that leave the dataset root: refused with the CSV line unless allow_outside_root."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cass_lightning.data import MedicalDataModule
from cass_lightning.data.layouts import index_autoimmune, index_csv, index_isic2019
from data_fixtures import ISIC_CSV, ISIC_INPUT, autoimmune, image, isic, isic_row

OPTION = "data.allow_outside_root=true"


def _csv(root: Path, rows: list[str], files: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    for i, name in enumerate(files):
        image(root / name, seed=i)
    (root / "labels.csv").write_text("\n".join(["path,label", *rows]) + "\n")
    return root


def test_isic_image_cell_climbing_out_is_refused_naming_the_line(tmp_path) -> None:
    secret = image(tmp_path / "secret.jpg")
    root = tmp_path / "deep" / "isic"
    rows = [isic_row("ISIC_0000000", "MEL"), isic_row("../../../secret", "NV")]
    isic(root, rows=rows)
    with pytest.raises(ValueError) as info:
        index_isic2019(root)
    message = str(info.value)
    assert ISIC_CSV in message and "line 3 (image ../../../secret)" in message
    assert "leaves the dataset root" in message and OPTION in message
    allowed = index_isic2019(root, allow_outside_root=True)
    assert str(secret) in allowed.keys
    assert allowed.reader(str(secret)).size == (12, 10)


def test_isic_absolute_image_cell_outside_is_refused(tmp_path) -> None:
    secret = image(tmp_path / "elsewhere" / "x.jpg")
    root = isic(tmp_path / "isic", rows=[isic_row(str(secret.with_suffix("")), "MEL")])
    with pytest.raises(ValueError, match=r"line 2 .*leaves the dataset root"):
        index_isic2019(root)


@pytest.mark.parametrize("cell", ["../outside.png", "ABSOLUTE"])
def test_csv_paths_leaving_the_root_are_refused_naming_the_line(tmp_path, cell) -> None:
    outside = image(tmp_path / "outside.png")
    if cell == "ABSOLUTE":
        cell = str(outside)
    root = _csv(tmp_path / "root", ["a.png,x", f"{cell},y", "b.png,y"])
    with pytest.raises(ValueError) as info:
        index_csv(root, csv_file="labels.csv")
    message = str(info.value)
    assert "labels.csv" in message and f"line 3: path 'path' {cell!r}" in message
    assert OPTION in message
    allowed = index_csv(root, csv_file="labels.csv", allow_outside_root=True)
    assert allowed.keys == sorted(["a.png", "b.png", str(outside)])


def test_autoimmune_file_leaving_the_root_is_refused(tmp_path) -> None:
    image(tmp_path / "other.png")
    root = autoimmune(tmp_path / "auto")
    with (root / "labels.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(["../other.png", "['DM']"])
    with pytest.raises(ValueError, match=r"line 7: path 'file' '\.\./other\.png' leaves"):
        index_autoimmune(root)
    assert len(index_autoimmune(root, allow_outside_root=True)) == 6


def test_image_dir_option_leaving_the_root_is_refused(tmp_path) -> None:
    image(tmp_path / "pics" / "a.png")
    root = tmp_path / "root"
    root.mkdir()
    (root / "labels.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(ValueError, match=r"option image_dir '\.\./pics' leaves the dataset root"):
        index_csv(root, csv_file="labels.csv", image_dir="../pics")
    index = index_csv(root, csv_file="labels.csv", image_dir="../pics", allow_outside_root=True)
    assert index.keys == [str((tmp_path / "pics" / "a.png").resolve())]


def test_paths_that_stay_inside_are_normalised_not_refused(tmp_path) -> None:
    root = _csv(tmp_path / "root", ["sub/../a.png,x", f"{tmp_path / 'root' / 'b.png'},y"])
    assert index_csv(root, csv_file="labels.csv").keys == ["a.png", "b.png"]
    alias = tmp_path / "alias"
    alias.symlink_to(root)  # an absolute path spelled through a link to the root is inside
    (root / "labels.csv").write_text(f"path,label\n{alias / 'a.png'},x\nb.png,y\n")
    assert index_csv(alias, csv_file="labels.csv").keys == ["a.png", "b.png"]


def test_symlinks_inside_the_root_are_followed(tmp_path) -> None:
    """The chosen rule: a link placed in the root by its owner is part of the dataset."""
    target = image(tmp_path / "store" / "big.png", size=(7, 5))
    root = _csv(tmp_path / "root", ["a.png,x", "linked.png,y"], files=("a.png",))
    (root / "linked.png").symlink_to(target)
    index = index_csv(root, csv_file="labels.csv")
    assert index.keys == ["a.png", "linked.png"] and index.reader("linked.png").size == (7, 5)
    isic_root = isic(tmp_path / "isic")
    (isic_root / ISIC_INPUT / "ISIC_0000001.jpg").unlink()
    (isic_root / ISIC_INPUT / "ISIC_0000001.jpg").symlink_to(image(tmp_path / "s" / "x.jpg"))
    assert f"{ISIC_INPUT}/ISIC_0000001.jpg" in index_isic2019(isic_root).keys


def test_datamodule_passes_allow_outside_root_to_csv_layouts(tmp_path) -> None:
    image(tmp_path / "outside.png")
    root = _csv(tmp_path / "root", ["a.png,x", "../outside.png,y", "b.png,y"])
    options = {"csv_file": "labels.csv"}
    kwargs = dict(img_size=8, batch_size=1, val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(ValueError, match=r"line 3: .*data\.allow_outside_root=true"):
        MedicalDataModule("csv", root, options=options, **kwargs).setup()
    dm = MedicalDataModule("csv", root, options=options, allow_outside_root=True, **kwargs)
    dm.setup()
    assert len(dm.split_indices("train")) == 3
    # Layouts without CSV paths take no such option and are unaffected by it.
    (tmp_path / "flat" / "c").mkdir(parents=True)
    image(tmp_path / "flat" / "c" / "x.png")
    image(tmp_path / "flat" / "c" / "y.png")
    MedicalDataModule("image_folder", tmp_path / "flat", allow_outside_root=True, **kwargs).setup()
