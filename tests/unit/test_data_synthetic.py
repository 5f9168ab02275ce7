"""The synthetic set: layout, manifest, determinism, write-once safety and real class structure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cass_lightning.data import synthetic, write_synthetic_dataset
from cass_lightning.data.synthetic import SYNTHETIC_CLASSES

SMALL = {"images_per_class": 3, "val_images_per_class": 2, "image_size": 32, "seed": 5}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (mtime_ns, size) for everything under `folder`, folders included."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in sorted(folder.rglob("*"))
    }


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), **SMALL)


def test_layout_counts_and_manifest(small_set: Path) -> None:
    assert small_set.name == "synthetic-n3-v2-s32-seed5"
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (small_set / split).iterdir()) == list(SYNTHETIC_CLASSES)
        for name in SYNTHETIC_CLASSES:
            files = sorted(p.name for p in (small_set / split / name).iterdir())
            assert files == [f"{name}_{i:05d}.png" for i in range(count)]
    with Image.open(small_set / "train" / "fibres" / "fibres_00000.png") as image:
        assert image.mode == "RGB"
        assert image.size == (32, 32)

    manifest = json.loads((small_set / "manifest.json").read_text())
    assert manifest["format_version"] == synthetic.FORMAT_VERSION
    assert manifest["params"] == SMALL
    assert manifest["classes"] == list(SYNTHETIC_CLASSES)
    assert manifest["counts"]["train"] == dict.fromkeys(SYNTHETIC_CLASSES, 3)
    assert manifest["counts"]["val"] == dict.fromkeys(SYNTHETIC_CLASSES, 2)


def test_no_temporary_folders_left_behind(small_set: Path) -> None:
    assert [p.name for p in small_set.parent.iterdir()] == [small_set.name]


def test_same_arguments_give_byte_identical_files(small_set: Path, tmp_path: Path) -> None:
    again = write_synthetic_dataset(tmp_path, **SMALL)
    assert again != small_set
    assert _file_bytes(again) == _file_bytes(small_set)


def test_images_differ_within_a_class(small_set: Path) -> None:
    folder = small_set / "train" / "round_lesion"
    contents = {path.read_bytes() for path in folder.iterdir()}
    assert len(contents) == 3


def test_second_call_writes_nothing(tmp_path: Path) -> None:
    first = write_synthetic_dataset(tmp_path, **SMALL)
    before = _snapshot(tmp_path)
    second = write_synthetic_dataset(tmp_path, **SMALL)
    assert second == first
    assert _snapshot(tmp_path) == before


def test_different_parameters_get_different_folders(tmp_path: Path) -> None:
    first = write_synthetic_dataset(tmp_path, **SMALL)
    before = _file_bytes(first)
    other = write_synthetic_dataset(tmp_path, **{**SMALL, "seed": 6})
    bigger = write_synthetic_dataset(tmp_path, **{**SMALL, "image_size": 40})
    assert len({first, other, bigger}) == 3
    assert _file_bytes(first) == before
    assert _file_bytes(other) != before


def test_folder_without_manifest_raises_and_is_left_intact(tmp_path: Path) -> None:
    folder = tmp_path / "synthetic-n3-v2-s32-seed5"
    (folder / "train").mkdir(parents=True)
    precious = folder / "train" / "notes.txt"
    precious.write_text("user data")
    with pytest.raises(FileExistsError, match=re.escape("no manifest.json")) as info:
        write_synthetic_dataset(tmp_path, **SMALL)
    assert str(folder) in str(info.value)
    assert precious.read_text() == "user data"
    assert sorted(p.name for p in folder.rglob("*")) == ["notes.txt", "train"]


def test_folder_with_mismatched_manifest_raises(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path, **SMALL)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = -1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=re.escape(str(manifest_path))):
        write_synthetic_dataset(tmp_path, **SMALL)
    manifest_path.write_text("{not json")
    with pytest.raises(FileExistsError, match=re.escape("manifest.json")):
        write_synthetic_dataset(tmp_path, **SMALL)
    assert manifest_path.read_text() == "{not json"


def test_interrupted_write_leaves_no_complete_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render = synthetic.render_synthetic_image
    calls = {"n": 0}

    def failing_render(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "render_synthetic_image", failing_render)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(synthetic, "render_synthetic_image", real_render)
    folder = write_synthetic_dataset(tmp_path, **SMALL)
    assert (folder / "manifest.json").is_file()


def test_zero_validation_images_means_no_val_folder(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(
        tmp_path, images_per_class=1, val_images_per_class=0, image_size=16
    )
    assert (folder / "train").is_dir()
    assert not (folder / "val").exists()
    assert "val" not in json.loads((folder / "manifest.json").read_text())["counts"]


@pytest.mark.parametrize(
    "bad",
    [
        {"images_per_class": 0},
        {"val_images_per_class": -1},
        {"image_size": 4},
        {"seed": -1},
        {"images_per_class": 2.5},
    ],
)
def test_bad_parameters_are_rejected(tmp_path: Path, bad: dict[str, object]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        write_synthetic_dataset(tmp_path, **bad)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def _load_split(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(SYNTHETIC_CLASSES):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as image:
                images.append(np.asarray(image, dtype=np.float64) / 255.0)
            labels.append(label)
    return np.stack(images), np.array(labels)


def _radial_spectrum(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Log share of image energy per spatial-frequency band: blind to position and rotation."""
    grey = images.mean(axis=-1)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(grey)) ** 2
    freq = np.fft.fftfreq(grey.shape[1])
    band = np.minimum((np.hypot(freq[:, None], freq[None, :]) / 0.5 * bins).astype(int), bins - 1)
    energy = np.stack([power[:, band == b].sum(axis=1) for b in range(bins)], axis=1)
    return np.log(energy / energy.sum(axis=1, keepdims=True) + 1e-9)


def _mean_colour(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=(1, 2))


def _nearest_centroid_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    centre, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    train_x, test_x = (train_x - centre) / scale, (test_x - centre) / scale
    centroids = np.stack([train_x[train_y == k].mean(axis=0) for k in np.unique(train_y)])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((distances.argmin(axis=1) == test_y).mean())


def test_nearest_centroid_accuracy_mechanics() -> None:
    train_x = np.array([[0.0], [0.2], [5.0], [5.2]])
    train_y = np.array([0, 0, 1, 1])
    accuracy = _nearest_centroid_accuracy(
        train_x, train_y, np.array([[0.1], [4.9]]), np.array([0, 0])
    )
    assert accuracy == 0.5


def test_classes_differ_by_structure_not_by_mean_colour(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(
        tmp_path, images_per_class=12, val_images_per_class=8, image_size=48, seed=77
    )
    train_x, train_y = _load_split(folder / "train")
    test_x, test_y = _load_split(folder / "val")
    structure = _nearest_centroid_accuracy(
        _radial_spectrum(train_x), train_y, _radial_spectrum(test_x), test_y
    )
    colour = _nearest_centroid_accuracy(
        _mean_colour(train_x), train_y, _mean_colour(test_x), test_y
    )
    assert structure >= 0.6  # chance is 1/6
    assert colour <= 0.4
    assert structure - colour >= 0.3
