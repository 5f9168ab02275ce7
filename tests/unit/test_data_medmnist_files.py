"""MedMNIST files as users have them: damaged downloads and the 28 px file under a 64 px default."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from cass_lightning.data import MedMNISTDataModule
from cass_lightning.data.layouts import index_medmnist
from data_fixtures import npz


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_bytes(path: Path) -> None:
    """Corrupt the compressed data inside the archive, keeping the zip directory intact."""
    data = bytearray(path.read_bytes())
    for offset in (120, 160, 200):
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes], ids=["truncated", "corrupted"])
def test_damaged_npz_is_a_value_error_naming_the_file_and_the_remedy(tmp_path, damage) -> None:
    path = npz(tmp_path, "dermamnist.npz")
    damage(path)
    with pytest.raises(ValueError) as info:
        index_medmnist(tmp_path, name="dermamnist")
    message = str(info.value)
    assert str(path) in message
    assert "download the file again" in message and "damaged or incomplete" in message


def test_the_only_file_of_the_set_is_used_with_a_warning_naming_it(tmp_path) -> None:
    npz(tmp_path, "dermamnist.npz")  # the standard 28 px download
    npz(tmp_path, "bloodmnist_64.npz")  # another set: not a candidate
    with pytest.warns(UserWarning, match=r"using dermamnist\.npz \(28 px images\)"):
        index = index_medmnist(tmp_path, name="dermamnist", size=64)
    assert index.reader.path.name == "dermamnist.npz" and len(index) == 9
    with pytest.warns(UserWarning, match=r"using dermamnist\.npz"):
        dm = MedMNISTDataModule(tmp_path, name="dermamnist", size=64, img_size=16, batch_size=2)
        dm.setup()
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16)  # resized to img_size whatever the file's size


def test_a_size_suffixed_file_stands_in_for_the_plain_one(tmp_path) -> None:
    npz(tmp_path, "pathmnist_128.npz")
    with pytest.warns(UserWarning, match=r"using pathmnist_128\.npz \(128 px images\)"):
        index = index_medmnist(tmp_path, name="pathmnist", size=None)
    assert index.reader.path.name == "pathmnist_128.npz"


def test_the_requested_size_wins_without_a_warning(tmp_path) -> None:
    npz(tmp_path, "dermamnist.npz")
    npz(tmp_path, "dermamnist_64.npz", rgb=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = index_medmnist(tmp_path, name="dermamnist", size=64)
    assert index.reader.path.name == "dermamnist_64.npz"
    assert np.asarray(index.reader("train/000000")).shape == (8, 8, 3)


def test_several_other_sizes_are_listed_and_refused(tmp_path) -> None:
    npz(tmp_path, "dermamnist.npz")
    npz(tmp_path, "dermamnist_128.npz")
    with pytest.raises(FileNotFoundError) as info:
        index_medmnist(tmp_path, name="dermamnist", size=64)
    message = str(info.value)
    assert "dermamnist_64.npz not found" in message
    assert "dermamnist.npz (28 px)" in message and "dermamnist_128.npz (128 px)" in message
    assert "data.size=" in message
