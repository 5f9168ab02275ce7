"""The decoded image cache: exact pixels, reuse without decoding, rebuilds, bad files, safety."""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cass_lightning.data.cache import (
    ARRAY_FILE,
    MANIFEST_FILE,
    CachedReader,
    build_cache,
    cache_size_for,
)
from cass_lightning.data.index import FileReader, SampleIndex

SIZE = 16
BILINEAR = Image.Resampling.BILINEAR


# --- fixtures ---------------------------------------------------------------------------------


def _noise(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _write_images(root: Path) -> list[str]:
    """Small files of different sizes and formats, one greyscale, one in a sub-folder."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    _noise(0, 40, 30).save(root / "a.png")
    _noise(1, 64, 48).save(root / "b.jpg", quality=90)
    _noise(2, 25, 35, mode="L").save(root / "grey.png")
    _noise(3, 33, 17).save(root / "sub" / "c.jpg", quality=90)
    return ["a.png", "b.jpg", "grey.png", "sub/c.jpg"]


def _index(root: Path, keys: list[str], reader: object | None = None) -> SampleIndex:
    return SampleIndex(
        name="t",
        root=root,
        keys=list(keys),
        targets=np.arange(len(keys)) % 2,
        classes=["x", "y"],
        reader=reader if reader is not None else FileReader(root),
    )


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "data"
    return root, _write_images(root)


@dataclass
class CountingReader:
    """A FileReader that counts decodes per key (fingerprints and descriptions pass through)."""

    root: Path
    calls: list[str] = field(default_factory=list)

    def __call__(self, key: str) -> Image.Image:
        self.calls.append(key)
        return FileReader(self.root)(key)

    def describe(self, key: str) -> str:
        return FileReader(self.root).describe(key)

    def fingerprint(self, key: str) -> str:
        return FileReader(self.root).fingerprint(key)


class RaisingReader(CountingReader):
    """Fails the test if anything is decoded, even where the cache catches exceptions."""

    def __call__(self, key: str) -> Image.Image:
        self.calls.append(key)
        raise AssertionError(f"decoded {key} although the cache should have been reused")


class InterruptingReader(CountingReader):
    """Simulates a crash (Ctrl-C / kill) in the middle of a build."""

    def __call__(self, key: str) -> Image.Image:
        raise KeyboardInterrupt


def _expected(root: Path, key: str, size: int = SIZE) -> np.ndarray:
    return np.asarray(FileReader(root)(key).resize((size, size), BILINEAR))


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


# --- pixels and layout ------------------------------------------------------------------------


def test_cached_pixels_equal_pil_bilinear_resize(tmp_path: Path, data) -> None:
    root, keys = data
    cache = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    reader = cache.reader()
    assert cache.built and cache.size == SIZE and cache.keys == keys and cache.bad == {}
    for key in keys:
        image = reader(key)
        assert image.mode == "RGB" and image.size == (SIZE, SIZE)
        np.testing.assert_array_equal(np.asarray(image), _expected(root, key))


def test_layout_shape_dtype_and_manifest(tmp_path: Path, data) -> None:
    root, keys = data
    cache = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    assert cache.folder.parent == (tmp_path / "cache").resolve()
    assert re.fullmatch(rf"t-[0-9a-f]{{12}}-{SIZE}px", cache.folder.name)
    array = np.load(cache.folder / ARRAY_FILE, mmap_mode="r")
    assert array.shape == (len(keys), SIZE, SIZE, 3) and array.dtype == np.uint8
    np.testing.assert_array_equal(array[2], _expected(root, "grey.png"))
    manifest = json.loads((cache.folder / MANIFEST_FILE).read_text())
    assert manifest["keys"] == keys
    assert manifest["fingerprints"] == [FileReader(root).fingerprint(k) for k in keys]
    assert manifest["size"] == SIZE and manifest["root"] == str(root.resolve())
    assert manifest["bad"] == {} and isinstance(manifest["format_version"], int)


def test_sizes_and_roots_get_their_own_folders(tmp_path: Path, data) -> None:
    root, keys = data
    other = tmp_path / "other"
    _write_images(other)
    small = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    large = build_cache(_index(root, keys), tmp_path / "cache", SIZE * 2)
    elsewhere = build_cache(_index(other, keys), tmp_path / "cache", SIZE)
    assert len({small.folder, large.folder, elsewhere.folder}) == 3
    assert large.reader()("a.png").size == (SIZE * 2, SIZE * 2)


# --- reuse and rebuilds -----------------------------------------------------------------------


def test_second_build_reuses_without_decoding(tmp_path: Path, data) -> None:
    root, keys = data
    first = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    stamps = {n: (first.folder / n).stat().st_mtime_ns for n in (ARRAY_FILE, MANIFEST_FILE)}
    raising = RaisingReader(root)
    second = build_cache(_index(root, keys, raising), tmp_path / "cache", SIZE)
    assert raising.calls == []
    assert not second.built and second.folder == first.folder
    assert second.build_id == first.build_id
    assert {n: (second.folder / n).stat().st_mtime_ns for n in stamps} == stamps
    np.testing.assert_array_equal(np.asarray(second.reader()("b.jpg")), _expected(root, "b.jpg"))


def test_replaced_source_rebuilds_with_new_pixels(tmp_path: Path, data) -> None:
    root, keys = data
    first = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    old_pixels = np.asarray(first.reader()("b.jpg"))
    _noise(99, 50, 70).save(root / "b.jpg", quality=90)  # new content and size
    counting = CountingReader(root)
    second = build_cache(_index(root, keys, counting), tmp_path / "cache", SIZE)
    assert second.built and second.folder == first.folder
    assert counting.calls == ["b.jpg"]  # unchanged samples are copied, not decoded
    new_pixels = np.asarray(second.reader()("b.jpg"))
    np.testing.assert_array_equal(new_pixels, _expected(root, "b.jpg"))
    assert not np.array_equal(new_pixels, old_pixels)
    for key in keys:
        np.testing.assert_array_equal(np.asarray(second.reader()(key)), _expected(root, key))
    # Only the swapped-in cache and the lock file remain: no temporary or old folders.
    leftovers = {p.name for p in (tmp_path / "cache").iterdir()} - {second.folder.name}
    assert all(name.endswith(".lock") for name in leftovers), leftovers


def test_touched_source_rebuilds(tmp_path: Path, data) -> None:
    root, keys = data
    first = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    stat = (root / "a.png").stat()
    os.utime(root / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    counting = CountingReader(root)
    second = build_cache(_index(root, keys, counting), tmp_path / "cache", SIZE)
    assert second.built and second.build_id != first.build_id
    assert counting.calls == ["a.png"]
    assert second.reader().fingerprint("a.png") == FileReader(root).fingerprint("a.png")


def test_added_and_removed_keys_rebuild(tmp_path: Path, data) -> None:
    root, keys = data
    build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    _noise(7, 20, 20).save(root / "new.png")
    grown = build_cache(_index(root, [*keys, "new.png"]), tmp_path / "cache", SIZE)
    assert grown.built and grown.keys == [*keys, "new.png"]
    np.testing.assert_array_equal(np.asarray(grown.reader()("new.png")), _expected(root, "new.png"))
    shrunk = build_cache(_index(root, keys[1:]), tmp_path / "cache", SIZE)
    assert shrunk.built and shrunk.keys == keys[1:]
    with pytest.raises(KeyError, match=re.escape("a.png")):
        shrunk.reader()("a.png")


def test_reader_of_a_replaced_cache_refuses_to_serve(tmp_path: Path, data) -> None:
    root, keys = data
    stale = build_cache(_index(root, keys), tmp_path / "cache", SIZE).reader()
    stat = (root / "a.png").stat()
    os.utime(root / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    with pytest.raises(OSError, match="rebuilt"):
        stale("a.png")


def test_interrupted_rebuild_keeps_the_old_cache(tmp_path: Path, data) -> None:
    root, keys = data
    first = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    stat = (root / "a.png").stat()
    os.utime(root / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    with pytest.raises(KeyboardInterrupt):
        build_cache(_index(root, keys, InterruptingReader(root)), tmp_path / "cache", SIZE)
    manifest = json.loads((first.folder / MANIFEST_FILE).read_text())
    assert manifest["build_id"] == first.build_id
    assert not list((tmp_path / "cache").glob(".*.tmp-*"))


def test_leftover_temporary_folder_is_ignored_and_removed(tmp_path: Path, data) -> None:
    root, keys = data
    first = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    crashed = first.folder.parent / f".{first.folder.name}.tmp-crashed"
    crashed.mkdir()
    (crashed / MANIFEST_FILE).write_text("{}")
    stat = (root / "a.png").stat()
    os.utime(root / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    assert second.built and second.folder == first.folder
    assert not crashed.exists()


def test_worker_processes_give_the_same_pixels(tmp_path: Path, data) -> None:
    root, keys = data
    cache = build_cache(_index(root, keys), tmp_path / "cache", SIZE, workers=2)
    assert cache.built
    for key in keys:
        np.testing.assert_array_equal(np.asarray(cache.reader()(key)), _expected(root, key))


# --- bad files --------------------------------------------------------------------------------


def _add_bad_files(root: Path) -> list[str]:
    """A truncated JPEG, a zero-byte file and a text file named .png."""
    _noise(5, 64, 64).save(root / "whole.jpg", quality=90)
    whole = (root / "whole.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "whole.jpg").unlink()
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("not an image\n")
    return ["truncated.jpg", "empty.png", "text.png"]


def test_bad_files_raise_one_error_listing_all(tmp_path: Path, data) -> None:
    root, keys = data
    bad = _add_bad_files(root)
    with pytest.raises(OSError) as info:
        build_cache(_index(root, [*keys, *bad]), tmp_path / "cache", SIZE)
    message = str(info.value)
    assert "3 of 7" in message and "on_bad_file='skip'" in message
    for key in bad:
        assert str(root / key) in message
    for key in keys:
        assert f"{root / key}:" not in message
    assert not list((tmp_path / "cache").rglob(MANIFEST_FILE))  # nothing that looks valid


def test_bad_files_skipped_are_recorded(tmp_path: Path, data) -> None:
    root, keys = data
    bad = _add_bad_files(root)
    index = _index(root, [*keys, *bad])
    cache = build_cache(index, tmp_path / "cache", SIZE, on_bad_file="skip")
    assert sorted(cache.bad) == sorted(bad)
    assert all(str(root / key) in cache.bad[key] for key in bad)
    manifest = json.loads((cache.folder / MANIFEST_FILE).read_text())
    assert manifest["bad"] == cache.bad
    reader = cache.reader()
    for key in keys:
        np.testing.assert_array_equal(np.asarray(reader(key)), _expected(root, key))
    with pytest.raises(OSError, match=re.escape(str(cache.folder))):
        reader("empty.png")
    # The caller drops them: a copy of the index over the cache, without the bad samples.
    cached = cache.apply_to(index)
    assert cached.keys == keys and len(cached.targets) == len(keys)
    assert sorted(where for where, _ in cached.skipped) == sorted(str(root / k) for k in bad)
    # Asking for errors later reuses the cache (no decoding) and still reports every bad file.
    raising = RaisingReader(root)
    with pytest.raises(OSError, match="3 of 7"):
        build_cache(_index(root, [*keys, *bad], raising), tmp_path / "cache", SIZE)
    assert raising.calls == []


def test_unknown_bad_file_policy_is_refused(tmp_path: Path, data) -> None:
    root, keys = data
    with pytest.raises(ValueError, match="on_bad_file"):
        build_cache(_index(root, keys), tmp_path / "cache", SIZE, on_bad_file="ignore")


# --- safety -----------------------------------------------------------------------------------


def test_dataset_root_is_never_touched(tmp_path: Path, data) -> None:
    root, keys = data
    bad = _add_bad_files(root)
    before = _snapshot(root)
    build_cache(_index(root, [*keys, *bad]), tmp_path / "cache", SIZE, on_bad_file="skip")
    build_cache(_index(root, keys), tmp_path / "cache", SIZE, workers=2)
    build_cache(_index(root, keys), tmp_path / "cache", SIZE)
    with pytest.raises(OSError):
        build_cache(_index(root, [*keys, *bad]), tmp_path / "cache2", SIZE)
    assert _snapshot(root) == before


@pytest.mark.parametrize("inside", [".", "cache", "sub/cache"])
def test_cache_root_inside_dataset_root_is_refused(tmp_path: Path, data, inside: str) -> None:
    root, keys = data
    before = _snapshot(root)
    with pytest.raises(ValueError, match="inside the dataset root"):
        build_cache(_index(root, keys), root / inside, SIZE)
    assert _snapshot(root) == before


def test_cached_reader_pickles_small_and_reads_the_same(tmp_path: Path, data) -> None:
    root, keys = data
    reader = build_cache(_index(root, keys), tmp_path / "cache", SIZE).reader()
    expected = {key: np.asarray(reader(key)) for key in keys}  # maps the array in this process
    payload = pickle.dumps(reader)
    assert len(payload) < 1024  # the path and build id, not the pixels or the open map
    clone = pickle.loads(payload)
    assert isinstance(clone, CachedReader) and clone.folder == reader.folder
    for key in keys:
        np.testing.assert_array_equal(np.asarray(clone(key)), expected[key])
    assert clone.fingerprint("b.jpg") == FileReader(root).fingerprint("b.jpg")
    assert str(root / "b.jpg") in clone.describe("b.jpg")
    assert str(reader.folder) in clone.describe("b.jpg")


# --- cache_size_for ---------------------------------------------------------------------------


def test_cache_size_for_defaults_to_the_training_size() -> None:
    assert cache_size_for(384, None) == 384
    assert cache_size_for(384, 384) == 384
    assert cache_size_for(224, 512) == 512


def test_cache_size_for_refuses_a_smaller_cache() -> None:
    with pytest.raises(ValueError, match=r"must be >= the training size"):
        cache_size_for(384, 256)


@pytest.mark.parametrize(
    ("img_size", "cache_size"), [(0, None), (384, 0), (True, None), (384, 3.5)]
)
def test_cache_size_for_refuses_non_positive_ints(img_size, cache_size) -> None:
    with pytest.raises(ValueError):
        cache_size_for(img_size, cache_size)
