"""The dataset's fingerprint: one digest that changes when any file a run indexed changes.

Two runs, or two invocations of one study, used the same data only when their fingerprints
agree: every indexed sample's key (the file's path relative to the dataset root), its size and
modification time (``ImageReader.fingerprint``: ``<size>-<mtime_ns>`` for files, the array
file's for MedMNIST), sorted, plus the class names. Images added to a class, a file replaced or
a class renamed all change it; reading no pixels keeps it cheap (one ``stat`` per file).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cass_lightning.data.index import SampleIndex


def file_listing(index: SampleIndex) -> dict[str, str]:
    """``{key: "<size>-<mtime_ns>"}`` of every indexed sample (a file that cannot be stat-ed
    reads ``unavailable``, so its loss changes the fingerprint rather than raising here)."""
    listing = {}
    for key in index.keys:
        try:
            listing[key] = str(index.reader.fingerprint(key))
        except OSError:
            listing[key] = "unavailable"
    return listing


def listing_digest(listing: dict[str, str], classes: list[str]) -> str:
    """The SHA-256 of the sorted listing and the class names."""
    text = json.dumps({"files": sorted(listing.items()), "classes": list(classes)})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dataset_fingerprint(index: SampleIndex) -> dict[str, Any]:
    """What runs record (``data_report.json``, ``results.json``): ``sha256`` over the files
    and class names, the number of ``files`` and the ``classes``."""
    listing = file_listing(index)
    return {
        "sha256": listing_digest(listing, index.classes),
        "files": len(listing),
        "classes": list(index.classes),
    }
