"""ImageFolderDataset and the data modules: layout errors, image modes, batches."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cass_lightning.data import ImageFolderDataset


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _rgb(seed: int, size: tuple[int, int] = (20, 12)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _make_tree(root: Path, counts: dict[str, int], start_seed: int = 0) -> Path:
    seed = start_seed
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _save(root / name / f"img_{i}.png", _rgb(seed))
            seed += 1
    return root


# --- ImageFolderDataset: layout ---------------------------------------------------------------


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ImageFolderDataset(missing)


def test_root_that_is_a_file_names_the_path(tmp_path: Path) -> None:
    file_root = tmp_path / "file.png"
    file_root.write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match=re.escape(str(file_root))):
        ImageFolderDataset(file_root)


def test_empty_root_explains_expected_layout(tmp_path: Path) -> None:
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(ValueError, match="no class folders") as info:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "<class>/<image>" in str(info.value)


def test_class_folders_without_images_explain_expected_layout(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images") as info:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "<class>/<image>" in str(info.value)


def test_one_empty_class_folder_is_reported(tmp_path: Path) -> None:
    _make_tree(tmp_path, {"a": 1, "c": 1})
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"\['b'\]"):
        ImageFolderDataset(tmp_path)


def test_index_classes_samples_and_targets(tmp_path: Path) -> None:
    _make_tree(tmp_path, {"zebra": 2, "apple": 1})
    _save(tmp_path / "apple" / "nested" / "deep.PNG", _rgb(9))
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    _save(tmp_path / "apple" / ".thumb.png", _rgb(10))
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == ["apple", "zebra"]
    assert dataset.class_to_idx == {"apple": 0, "zebra": 1}
    assert len(dataset) == 4
    assert dataset.targets == [0, 0, 1, 1]
    assert [Path(p).name for p, _ in dataset.samples] == [
        "img_0.png",
        "deep.PNG",
        "img_0.png",
        "img_1.png",
    ]
    assert all(label == target for (_, label), target in zip(dataset.samples, dataset.targets))


def test_extensions_filter(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "x.png", _rgb(0))
    _save(tmp_path / "a" / "y.bmp", _rgb(1))
    dataset = ImageFolderDataset(tmp_path, extensions=(".BMP",))
    assert [Path(p).name for p, _ in dataset.samples] == ["y.bmp"]


# --- ImageFolderDataset: reading ---------------------------------------------------------------


def _mode_images() -> dict[str, Image.Image]:
    rgb = _rgb(3, size=(10, 6))
    palette_transparent = rgb.convert("P")
    palette_transparent.info["transparency"] = bytes([0, 128])  # per-entry alpha (tRNS)
    ramp = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000).astype(np.uint16)
    return {
        "rgb": rgb,
        "rgba": rgb.convert("RGBA"),
        "palette": rgb.convert("P"),
        "palette_transparent": palette_transparent,
        "grey": rgb.convert("L"),
        "grey16": Image.fromarray(ramp),
    }


@pytest.mark.parametrize("kind", sorted(_mode_images()))
def test_image_modes_load_as_rgb_float_tensors(tmp_path: Path, kind: str) -> None:
    _save(tmp_path / "only" / f"{kind}.png", _mode_images()[kind])
    dataset = ImageFolderDataset(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, label = dataset[0]
    assert label == 0
    assert image.shape == (3, 6, 10)
    assert image.dtype == torch.float32
    assert 0.0 <= image.min() <= image.max() <= 1.0


def test_sixteen_bit_images_are_rescaled_not_clipped(tmp_path: Path) -> None:
    image16 = _mode_images()["grey16"]
    path = _save(tmp_path / "only" / "scan.png", image16)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")
    image, _ = ImageFolderDataset(tmp_path)[0]
    expected = torch.from_numpy(np.asarray(image16, dtype=np.float32) / 65535.0)
    assert torch.allclose(image[0], expected, atol=1 / 255)
    assert torch.equal(image[0], image[1])
    assert torch.equal(image[0], image[2])


def test_transform_is_applied(tmp_path: Path) -> None:
    _make_tree(tmp_path, {"a": 1})
    dataset = ImageFolderDataset(tmp_path, transform=lambda image: torch.tensor(image.size))
    assert dataset[0][0].tolist() == [20, 12]


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "a" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(os.urandom(256))
    dataset = ImageFolderDataset(tmp_path)
    with pytest.raises(OSError, match=re.escape("broken.png")) as info:
        dataset[0]
    assert str(bad) in str(info.value)


def test_truncated_png_error_names_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "a" / "cut.png", _rgb(0, size=(64, 64)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError, match=re.escape("cut.png")):
        ImageFolderDataset(tmp_path)[0]
