"""EXIF orientation: phone and dermoscope pictures are read upright, and the cache follows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cass_lightning.data import index as index_module
from cass_lightning.data import validate
from cass_lightning.data.cache import build, build_cache, store
from cass_lightning.data.index import FileReader, SampleIndex, load_rgb

RED, BLUE = (255, 0, 0), (0, 0, 255)
EXIF_ORIENTATION = 0x0112  # the EXIF tag number, as cameras write it


def _sensor_pixels() -> np.ndarray:
    """20 wide, 10 high: the left half red, the right half blue (as stored, not as shown)."""
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, :10] = RED
    pixels[:, 10:] = BLUE
    return pixels


def _tagged(path: Path, orientation: int) -> Path:
    image = Image.fromarray(_sensor_pixels())
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    image.save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def _colour(pixels: np.ndarray) -> tuple[int, int, int]:
    return tuple(round(float(c) / 255) * 255 for c in pixels.reshape(-1, 3).mean(axis=0))


def test_jpeg_turned_by_exif_orientation_6_reads_upright(tmp_path) -> None:
    path = _tagged(tmp_path / "phone.jpg", orientation=6)  # shown turned 90 degrees clockwise
    with Image.open(path) as raw:
        assert raw.size == (20, 10)  # what the file stores
    image = load_rgb(path)
    assert image.size == (10, 20)
    pixels = np.asarray(image)
    assert _colour(pixels[2:8]) == RED and _colour(pixels[12:18]) == BLUE  # left half on top


def test_png_with_orientation_3_reads_turned_half_way(tmp_path) -> None:
    path = _tagged(tmp_path / "scope.png", orientation=3)  # shown upside down
    pixels = np.asarray(load_rgb(path))
    assert pixels.shape == (10, 20, 3)
    assert tuple(pixels[5, 2]) == BLUE and tuple(pixels[5, 17]) == RED


def test_header_check_reports_the_upright_size(tmp_path) -> None:
    _tagged(tmp_path / "phone.jpg", orientation=6)
    probes = validate.probe_images(FileReader(tmp_path), ["phone.jpg"], level="header")
    assert probes == [((10, 20), None)]


def _index(root: Path) -> SampleIndex:
    return SampleIndex(
        name="exif",
        root=root,
        keys=["phone.jpg"],
        targets=np.zeros(1, dtype=np.int64),
        classes=["a"],
        reader=FileReader(root),
    )


def _old_load_rgb(path):
    """How images were read before orientation was applied (for the stale-cache test)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def test_a_cache_built_before_orientation_is_not_served(tmp_path, monkeypatch) -> None:
    root = tmp_path / "data"
    root.mkdir()
    _tagged(root / "phone.jpg", orientation=6)
    with monkeypatch.context() as old:  # a cache as the previous release wrote it
        old.setattr(index_module, "load_rgb", _old_load_rgb)
        old.setattr(store, "FORMAT_VERSION", 1)
        old.setattr(build, "FORMAT_VERSION", 1)
        stale = build_cache(_index(root), tmp_path / "cache", 16)
        stale_pixels = np.asarray(stale.reader()("phone.jpg"))
        assert _colour(stale_pixels[:, :6]) == RED  # unrotated: red on the left
    cache = build_cache(_index(root), tmp_path / "cache", 16)
    assert cache.built and cache.folder != stale.folder
    pixels = np.asarray(cache.reader()("phone.jpg"))
    assert _colour(pixels[:6]) == RED and _colour(pixels[10:]) == BLUE  # upright: red on top


#: Where the stored left (red) half ends up once the picture is shown as the tag says.
RED_SIDE = {1: "left", 2: "right", 3: "right", 4: "left", 5: "top", 6: "top", 7: "bottom",
            8: "bottom"}  # fmt: skip


@pytest.mark.parametrize("orientation", sorted(RED_SIDE))
def test_every_orientation_gives_the_shown_picture(tmp_path, orientation) -> None:
    pixels = np.asarray(load_rgb(_tagged(tmp_path / f"o{orientation}.png", orientation)))
    turned = orientation in (5, 6, 7, 8)
    assert pixels.shape == ((20, 10, 3) if turned else (10, 20, 3))
    halves = {
        "left": pixels[:, :10], "right": pixels[:, -10:],
        "top": pixels[:10], "bottom": pixels[-10:],
    }  # fmt: skip
    assert _colour(halves[RED_SIDE[orientation]]) == RED
