"""A decoded, resized image cache: decode each large image once, not every epoch.

Medical images are big (ISIC JPEGs are ~1000x700 px and up) and the CASS paper trains at
384 px, so decoding and resizing them every epoch starves the accelerator. :func:`build_cache`
decodes every sample of a :class:`SampleIndex` once, resizes it to ``size x size`` exactly as the
paper's ``Resize((s, s))`` does (PIL bilinear with antialias, aspect not kept) and stores the
pixels in one uint8 array file under ``<cache_root>``, never under the dataset root.

The cache folder is named after the index and a hash of (resolved dataset root, size, format
version), so runs and sweep jobs on the same data share it. Its manifest records every key's
source fingerprint; when any key or fingerprint differs the cache is rebuilt into a temporary
sibling folder and swapped in with a rename, so a crash never leaves a half-written cache that
looks valid. Unchanged samples are copied from the old cache instead of being decoded again.

Layout of ``<cache_root>/<name>-<hash>-<size>px/``:

- ``images.u8``: a ``.npy`` file (read with ``np.load(..., mmap_mode="r")``) of shape
  ``(N, size, size, 3)``, uint8, one row per index key in index order (rows of bad samples are
  zero and never served).
- ``manifest.json``: format version, build id, size, index name and root, keys, fingerprints,
  source descriptions and the bad keys with their reasons.
"""

from cass_lightning.data.cache.build import BAD_FILE_POLICIES, build_cache
from cass_lightning.data.cache.store import (
    ARRAY_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    CachedReader,
    ImageCache,
    cache_folder_name,
    cache_size_for,
)

__all__ = [
    "ARRAY_FILE",
    "BAD_FILE_POLICIES",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "CachedReader",
    "ImageCache",
    "build_cache",
    "cache_folder_name",
    "cache_size_for",
]
