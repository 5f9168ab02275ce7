"""Reading image files as RGB: every common mode, 16-bit scans, and errors that name the file."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from cass_lightning.data.index import load_rgb


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
    path = _save(tmp_path / "only" / f"{kind}.png", _mode_images()[kind])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = TF.to_tensor(load_rgb(path))
    assert image.shape == (3, 6, 10)
    assert image.dtype == torch.float32
    assert 0.0 <= image.min() <= image.max() <= 1.0


def test_sixteen_bit_images_are_rescaled_not_clipped(tmp_path: Path) -> None:
    image16 = _mode_images()["grey16"]
    path = _save(tmp_path / "only" / "scan.png", image16)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")
    image = TF.to_tensor(load_rgb(path))
    expected = torch.from_numpy(np.asarray(image16, dtype=np.float32) / 65535.0)
    assert torch.allclose(image[0], expected, atol=1 / 255)
    assert torch.equal(image[0], image[1])
    assert torch.equal(image[0], image[2])


def test_corrupt_file_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "a" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(os.urandom(256))
    with pytest.raises(OSError, match=re.escape("broken.png")) as info:
        load_rgb(bad)
    assert str(bad) in str(info.value)


def test_truncated_png_error_names_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "a" / "cut.png", _rgb(0, size=(64, 64)))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OSError, match=re.escape("cut.png")):
        load_rgb(path)
