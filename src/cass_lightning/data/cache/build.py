"""Building (or reusing) the cache: decode each sample once, in parallel if asked, swap it in.

A rebuild writes into a temporary sibling folder and renames it over the old cache, so a crash
never leaves a half-written cache that looks valid; unchanged samples are copied, not decoded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from cass_lightning.checks import check_choice
from cass_lightning.data.cache.store import (
    ARRAY_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    ImageCache,
    _cache_from_manifest,
    _check_positive_int,
    _manifest_matches,
    _open_if_current,
    _read_manifest,
    cache_folder_name,
)
from cass_lightning.data.index import ImageReader, SampleIndex

try:  # POSIX only: serialises concurrent builders (sweep jobs) of the same cache.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

BAD_FILE_POLICIES = ("error", "skip")
_CHUNK = 16  # keys per task when decoding in worker processes


def build_cache(
    index: SampleIndex,
    cache_root: str | Path,
    size: int,
    *,
    on_bad_file: str = "error",
    progress: bool = False,
    workers: int = 0,
) -> ImageCache:
    """Open the cache of ``index`` at ``size`` px under ``cache_root``, building it if needed.

    Reuses an existing cache without decoding anything when its keys and fingerprints match the
    index exactly; otherwise (re)builds it, decoding only samples whose fingerprint changed.

    Args:
        index: the samples to cache; only ``index.reader`` is read, ``index.root`` never written.
        cache_root: where cache folders live; must not be at or under the dataset root.
        size: side of the square cached images (see :func:`cache_size_for`).
        on_bad_file: ``"error"`` raises one error listing every unreadable sample after trying
            them all; ``"skip"`` records them in the manifest and :attr:`ImageCache.bad`.
        progress: print decoding progress to stderr.
        workers: decode in this many worker processes (0 decodes in this process); the reader
            must then be picklable.
    """
    _check_positive_int("size", size)
    _check_positive_int("workers", workers, allow_zero=True)
    check_choice("on_bad_file", on_bad_file, BAD_FILE_POLICIES)
    if len(index) == 0:
        raise ValueError(f"{index.name}: the index under {index.root} has no samples to cache")
    if len(set(index.keys)) != len(index.keys):
        raise ValueError(f"{index.name}: the index under {index.root} has duplicate keys")

    data_root = Path(index.root).resolve()
    cache_root = Path(cache_root).resolve()
    if cache_root == data_root or data_root in cache_root.parents:
        raise ValueError(
            f"cache root {cache_root} is inside the dataset root {data_root}; "
            "the cache must live outside the data it caches"
        )
    name = cache_folder_name(index, size)
    folder = cache_root / name

    fingerprints = [_fingerprint(index.reader, key) for key in index.keys]
    cache = _open_if_current(folder, index, size, data_root, fingerprints)
    if cache is None:
        cache_root.mkdir(parents=True, exist_ok=True)
        with _build_lock(cache_root, name) as exclusive:
            # Another job may have built it while this one waited for the lock.
            cache = _open_if_current(folder, index, size, data_root, fingerprints)
            if cache is None:
                if exclusive:
                    _remove_leftovers(cache_root, name)
                cache = _build(
                    index, folder, size, data_root, fingerprints, on_bad_file, progress, workers
                )
    if cache.bad and on_bad_file == "error":
        raise _bad_files_error(index, cache.bad)
    return cache


def _fingerprint(reader: ImageReader, key: str) -> str:
    """The source fingerprint, or a stable marker when the source cannot even be stat-ed."""
    try:
        return str(reader.fingerprint(key))
    except Exception as exc:
        return f"unavailable ({type(exc).__name__})"


def _decode(reader: ImageReader, key: str, size: int) -> np.ndarray:
    """The paper's ``Resize((size, size))`` on a PIL image: bilinear with antialias."""
    image = reader(key)
    if image.mode != "RGB":
        image = image.convert("RGB")
    resized = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


@contextlib.contextmanager
def _build_lock(cache_root: Path, name: str) -> Iterator[bool]:
    """Hold an exclusive lock on ``<cache_root>/.<name>.lock``; yields whether it is held."""
    if fcntl is None:  # pragma: no cover - Windows: builds are still atomic, just not queued
        yield False
        return
    with open(cache_root / f".{name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(cache_root: Path, name: str) -> None:
    """Delete temporary folders of crashed builds of this cache (only called under the lock)."""
    for prefix in (f".{name}.tmp-", f".{name}.old-"):
        # Folder names are sanitised to [A-Za-z0-9._-], so the prefix has no glob metacharacters.
        for path in cache_root.glob(f"{prefix}*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def _build(
    index: SampleIndex,
    folder: Path,
    size: int,
    data_root: Path,
    fingerprints: list[str],
    on_bad_file: str,
    progress: bool,
    workers: int,
) -> ImageCache:
    """Write a new cache into a temporary sibling folder, then swap it in."""
    cache_root = folder.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=cache_root))
    try:
        n = len(index)
        array = np.lib.format.open_memmap(
            tmp / ARRAY_FILE, mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        bad: dict[int, str] = {}
        todo = _copy_unchanged(folder, index, size, data_root, fingerprints, array)
        reporter = _Progress(index.name, len(todo), enabled=progress)
        if workers > 0 and len(todo) > 1:
            array.flush()
            bad.update(
                _decode_in_workers(index.reader, todo, index.keys, tmp, size, workers, reporter)
            )
        else:
            for row in todo:
                try:
                    array[row] = _decode(index.reader, index.keys[row], size)
                except Exception as exc:
                    bad[row] = _reason(exc)
                reporter.step()
        reporter.done()
        array.flush()
        del array
        for row, fingerprint in enumerate(fingerprints):
            if fingerprint.startswith("unavailable (") and row not in bad:
                bad[row] = f"could not fingerprint {index.reader.describe(index.keys[row])}"
        bad_by_key = {index.keys[row]: bad[row] for row in sorted(bad)}
        if on_bad_file == "error" and bad_by_key:
            raise _bad_files_error(index, bad_by_key)
        if len(bad_by_key) == n:
            raise OSError(
                f"{index.name}: none of the {n} samples under {index.root} could be read, "
                f"e.g. {index.reader.describe(index.keys[0])}: {bad_by_key[index.keys[0]]}"
            )
        manifest = {
            "format_version": FORMAT_VERSION,
            "build_id": uuid.uuid4().hex,
            "size": size,
            "index_name": index.name,
            "root": str(data_root),
            "shape": [n, size, size, 3],
            "keys": list(index.keys),
            "fingerprints": fingerprints,
            "sources": [index.reader.describe(key) for key in index.keys],
            "bad": bad_by_key,
        }
        _fsync_file(tmp / ARRAY_FILE)
        # The manifest is written last: an array without a manifest is never taken for a cache.
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _cache_from_manifest(folder, manifest, built=True)


def _copy_unchanged(
    folder: Path,
    index: SampleIndex,
    size: int,
    data_root: Path,
    fingerprints: list[str],
    array: np.ndarray,
) -> list[int]:
    """Copy rows whose source is unchanged from the old cache; return the rows to decode."""
    todo = list(range(len(index)))
    manifest = _read_manifest(folder)
    if manifest is None or not _manifest_matches(manifest, size, data_root):
        return todo
    try:
        old = np.load(folder / ARRAY_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return todo
    old_keys = manifest["keys"]
    if old.shape != (len(old_keys), size, size, 3) or old.dtype != np.uint8:
        return todo
    old_rows = {
        key: (row, fp)
        for row, (key, fp) in enumerate(zip(old_keys, manifest["fingerprints"]))
        if key not in manifest["bad"]
    }
    todo = []
    for row, (key, fingerprint) in enumerate(zip(index.keys, fingerprints)):
        previous = old_rows.get(key)
        if previous is not None and previous[1] == fingerprint:
            array[row] = old[previous[0]]
        else:
            todo.append(row)
    return todo


def _decode_chunk(
    reader: ImageReader, array_path: str, size: int, rows: Sequence[tuple[int, str]]
) -> list[tuple[int, str | None]]:
    """Worker side: decode ``rows`` straight into the shared array file."""
    array = np.load(array_path, mmap_mode="r+")
    results: list[tuple[int, str | None]] = []
    for row, key in rows:
        try:
            array[row] = _decode(reader, key, size)
            results.append((row, None))
        except Exception as exc:
            results.append((row, _reason(exc)))
    array.flush()
    del array
    return results


def _decode_in_workers(
    reader: ImageReader,
    todo: list[int],
    keys: Sequence[str],
    tmp: Path,
    size: int,
    workers: int,
    reporter: _Progress,
) -> dict[int, str]:
    bad: dict[int, str] = {}
    chunks = [
        [(row, keys[row]) for row in todo[start : start + _CHUNK]]
        for start in range(0, len(todo), _CHUNK)
    ]
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        futures = [
            pool.submit(_decode_chunk, reader, str(tmp / ARRAY_FILE), size, chunk)
            for chunk in chunks
        ]
        for future in futures:
            for row, reason in future.result():
                if reason is not None:
                    bad[row] = reason
                reporter.step()
    return bad


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the finished ``tmp`` at ``folder``; the old cache is removed only afterwards."""
    old: Path | None = None
    if folder.exists() or folder.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / "cache")
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _bad_files_error(index: SampleIndex, bad: dict[str, str]) -> OSError:
    lines = [f"  {index.reader.describe(key)}: {reason}" for key, reason in bad.items()]
    return OSError(
        f"{index.name}: {len(bad)} of {len(index)} images under {index.root} could not be "
        "cached (pass on_bad_file='skip' to leave them out):\n" + "\n".join(lines)
    )


class _Progress:
    """A plain stderr progress line, at most every two seconds (logs stay readable)."""

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.count = 0
        self.start = self.last = time.monotonic()

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self.enabled and now - self.last >= 2.0:
            self.last = now
            self._print(now)

    def done(self) -> None:
        if self.enabled:
            self._print(time.monotonic())

    def _print(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        print(
            f"caching {self.name}: {self.count}/{self.total} images ({rate:.1f}/s)",
            file=sys.stderr,
            flush=True,
        )
