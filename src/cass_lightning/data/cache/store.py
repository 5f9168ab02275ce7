"""The cache as stored: folder naming, the manifest, and reading cached pixels by key.

See the package docstring for the folder layout; :mod:`.build` writes what this module reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cass_lightning.data.index import SampleIndex
from cass_lightning.io import read_json

#: Bump when the file layout, the decoding or the resize changes; old caches then get a new
#: folder and are never served again. 2: images are turned upright by their EXIF orientation.
FORMAT_VERSION = 2
ARRAY_FILE = "images.u8"
MANIFEST_FILE = "manifest.json"


def cache_size_for(img_size: int, cache_size: int | None) -> int:
    """The side of the cached images: the training size unless a larger one is asked for.

    A cache smaller than the training size would make the training ``Resize`` upsample an
    already-shrunk image, silently losing detail the paper's pipeline keeps.
    """
    _check_positive_int("img_size", img_size)
    if cache_size is None:
        return img_size
    _check_positive_int("cache_size", cache_size)
    if cache_size < img_size:
        raise ValueError(
            f"cache_size {cache_size} is smaller than the training img_size {img_size}: "
            f"the cache must be >= the training size (use {img_size}, or None for the same)"
        )
    return cache_size


def cache_folder_name(index: SampleIndex, size: int) -> str:
    """``<name>-<hash of (resolved root, size, format version)>-<size>px``."""
    identity = json.dumps([str(Path(index.root).resolve()), int(size), FORMAT_VERSION])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", index.name) or "index"
    return f"{safe_name}-{digest}-{size}px"


@dataclasses.dataclass(frozen=True)
class ImageCache:
    """An opened cache folder.

    Attributes:
        folder: the cache folder.
        size: side of the cached square images.
        keys: every key of the index, in index order (one array row each).
        bad: key -> reason for samples that could not be read (their rows are never served).
        build_id: changes with every (re)build, so stale readers notice a swapped cache.
        built: whether this call decoded (part of) the cache rather than reusing it as is.
    """

    folder: Path
    size: int
    keys: list[str]
    bad: dict[str, str]
    build_id: str
    built: bool = False

    def __len__(self) -> int:
        return len(self.keys)

    def reader(self) -> CachedReader:
        """An :class:`ImageReader` over the cached pixels, cheap to send to DataLoader workers."""
        return CachedReader(self.folder, self.build_id)

    def apply_to(self, index: SampleIndex) -> SampleIndex:
        """A copy of ``index`` that reads from this cache, without the bad samples.

        Dropped samples are appended to ``skipped`` as ``(where, why)``, as layout readers do.
        """
        if list(index.keys) != self.keys:
            raise ValueError(
                f"cache {self.folder} holds {len(self.keys)} keys that differ from the "
                f"{len(index)} keys of index {index.name!r}; rebuild it with build_cache"
            )
        keep = np.array([key not in self.bad for key in index.keys], dtype=bool)
        skipped = list(index.skipped) + [
            (index.reader.describe(key), reason) for key, reason in self.bad.items()
        ]
        return dataclasses.replace(
            index,
            keys=[key for key, ok in zip(index.keys, keep) if ok],
            targets=index.targets[keep],
            splits=None if index.splits is None else index.splits[keep],
            reader=self.reader(),
            skipped=skipped,
        )


class CachedReader:
    """Reads cached pixels by key; implements :class:`ImageReader`.

    Pickles as the folder path and build id only; each process maps the array file lazily on
    first use, so DataLoader workers share the page cache instead of copying the array.
    """

    def __init__(self, folder: str | Path, build_id: str) -> None:
        self.folder = Path(folder)
        self.build_id = build_id
        self._opened: _Opened | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "build_id": self.build_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.folder = state["folder"]
        self.build_id = state["build_id"]
        self._opened = None

    def __repr__(self) -> str:
        return f"CachedReader({str(self.folder)!r})"

    def __call__(self, key: str) -> Image.Image:
        opened = self._open()
        row = opened.rows.get(key)
        if row is None:
            raise KeyError(f"cache {self.folder} has no entry {key!r}")
        if key in opened.bad:
            raise OSError(
                f"{self.describe(key)} has no pixels: the source could not be read when the "
                f"cache was built ({opened.bad[key]})"
            )
        # PIL copies RGB data (it stores 4 bytes per pixel), so the read-only map is never
        # written through the returned image.
        return Image.fromarray(opened.array[row])

    def describe(self, key: str) -> str:
        try:
            opened = self._open()
        except OSError:  # describe() feeds error messages; it must not fail itself
            return f"cache {self.folder} entry {key}"
        row = opened.rows.get(key)
        source = "not in this cache" if row is None else f"from {opened.sources[row]}"
        return f"cache {self.folder} entry {key} ({source})"

    def fingerprint(self, key: str) -> str:
        opened = self._open()
        row = opened.rows.get(key)
        if row is None:
            raise KeyError(f"cache {self.folder} has no entry {key!r}")
        return opened.fingerprints[row]

    def _open(self) -> _Opened:
        if self._opened is None:
            manifest = _read_manifest(self.folder)
            if manifest is None:
                raise OSError(f"cache {self.folder} is missing or unreadable; rebuild it")
            if manifest["build_id"] != self.build_id:
                raise OSError(
                    f"cache {self.folder} was rebuilt (its sources changed) after this reader "
                    "was made; open it again with build_cache"
                )
            keys = manifest["keys"]
            self._opened = _Opened(
                array=np.load(self.folder / ARRAY_FILE, mmap_mode="r"),
                rows={key: i for i, key in enumerate(keys)},
                fingerprints=manifest["fingerprints"],
                sources=manifest["sources"],
                bad=manifest["bad"],
            )
        return self._opened


# ------------------------------------------------------------------------------- internals
@dataclasses.dataclass(frozen=True)
class _Opened:
    array: np.ndarray
    rows: dict[str, int]
    fingerprints: list[str]
    sources: list[str]
    bad: dict[str, str]


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} int, got {value!r}")


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = read_json(folder / MANIFEST_FILE, "cache manifest")  # plain, bounded
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _open_if_current(
    folder: Path,
    index: SampleIndex,
    size: int,
    data_root: Path,
    fingerprints: list[str],
) -> ImageCache | None:
    """The cache in ``folder`` if it exists and matches the index exactly, else ``None``."""
    manifest = _read_manifest(folder)
    if manifest is None or not _manifest_matches(manifest, size, data_root):
        return None
    if manifest["keys"] != list(index.keys) or manifest["fingerprints"] != fingerprints:
        return None
    try:
        array = np.load(folder / ARRAY_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if array.shape != (len(index), size, size, 3) or array.dtype != np.uint8:
        return None
    return _cache_from_manifest(folder, manifest, built=False)


def _manifest_matches(manifest: dict[str, Any], size: int, data_root: Path) -> bool:
    return (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("size") == size
        and manifest.get("root") == str(data_root)
        and isinstance(manifest.get("keys"), list)
        and isinstance(manifest.get("fingerprints"), list)
        and isinstance(manifest.get("bad"), dict)
    )


def _cache_from_manifest(folder: Path, manifest: dict[str, Any], built: bool) -> ImageCache:
    return ImageCache(
        folder=folder,
        size=manifest["size"],
        keys=list(manifest["keys"]),
        bad=dict(manifest["bad"]),
        build_id=manifest["build_id"],
        built=built,
    )
