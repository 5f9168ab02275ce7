"""Check that every image of a dataset can be read, and summarise each split.

Runs at the start of every training run (and as ``cass-data check``), so a truncated JPEG or a
zero-byte file is reported, with every bad file named, before any training step rather than
hours into a run.
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cass_lightning.checks import check_choice
from cass_lightning.data.index import (
    FileReader,
    ImageReader,
    ImageTooLarge,
    SampleIndex,
    open_image,
    upright_size,
)
from cass_lightning.data.removal import format_removed

CHECK_LEVELS = ("full", "header", "none")


def header_size(path: Path) -> tuple[int, int]:
    """The upright ``(width, height)`` of an image file after checking its structure.

    ``Image.verify()`` must run directly after ``Image.open`` on a fresh handle, before
    anything else reads from the file (EXIF, pixels), and the handle is unusable
    afterwards: so one handle verifies (PNG: every chunk's checksum; other formats: the
    header) and a second one reads the upright size. ``verify`` does not look at a JPEG's
    compressed data, so a JPEG is also decoded at 1/8 scale (``draft``: a fraction of a full
    decode's time), which reads all of it and catches a file cut short.
    """
    with open_image(path) as image:
        image.verify()
    with open_image(path) as image:
        size = upright_size(image)
        if image.format == "JPEG":
            width, height = image.size
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
        return size


def _probe(reader: ImageReader, key: str, level: str) -> tuple[tuple[int, int] | None, str | None]:
    """``(size, None)`` for a readable image, ``(None, reason)`` otherwise."""
    try:
        if level == "header" and isinstance(reader, FileReader):
            return header_size(reader.root / key), None
        image = reader(key)
        return image.size, None
    except ImageTooLarge as exc:  # the message names the file; the report names it too
        return None, str(exc).replace(f": {reader.describe(key)} (", " (", 1)
    except Exception as exc:  # any failure to read is a bad file, named with its reason
        where = reader.describe(key)
        reason = str(exc).replace(f" {where}:", ":").replace(where, "").strip(" :")
        reason = reason or type(exc).__name__
        return None, reason


def _probe_chunk(reader: ImageReader, keys: list[str], level: str) -> list[Any]:
    return [_probe(reader, key, level) for key in keys]


def probe_images(
    reader: ImageReader, keys: list[str], level: str = "full", workers: int = 0
) -> list[tuple[tuple[int, int] | None, str | None]]:
    """Open every key (``full``: decode all pixels; ``header``: read headers only)."""
    check_choice("check_images", level, CHECK_LEVELS)
    if level == "none":
        return [(None, None)] * len(keys)
    if workers <= 1 or len(keys) < 256:
        return _probe_chunk(reader, keys, level)
    chunks = [keys[i : i + 256] for i in range(0, len(keys), 256)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_probe_chunk, [reader] * len(chunks), chunks, [level] * len(chunks))
        return [item for chunk in results for item in chunk]


@dataclass
class SplitSummary:
    images: int
    class_counts: dict[str, int]
    sizes: dict[str, int]  # "WxH" -> images, the most common first

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "class_counts": self.class_counts, "sizes": self.sizes}


@dataclass
class DataReport:
    """What ``cass-data check`` prints and what a run writes to ``data_report.json``."""

    dataset: str
    root: str
    classes: list[str]
    multi_label: bool
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    labelled: dict[str, int] = field(default_factory=dict)
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: ``split_seed`` and ``label_seed`` the splits and the labelled subset were drawn with.
    seeds: dict[str, int] = field(default_factory=dict)
    label_fraction: float | None = None
    #: What ``on_bad_file=skip`` left out (see ``removal.summarise_removed``).
    removed: dict[str, Any] = field(default_factory=dict)
    #: Classes left without images in a split by the removals, one sentence each.
    warnings: list[str] = field(default_factory=list)
    #: Files a folder layout passed over as not images, by extension (``{".txt": 2}``).
    ignored_files_by_extension: dict[str, int] = field(default_factory=dict)
    #: ``{"val": [...], "test": [...]}``: classes with images but none in that split, so its
    #: metrics (macro-F1 among them) are computed over the other classes.
    classes_missing_from_splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "classes": self.classes,
            "multi_label": self.multi_label,
            "splits": {k: v.as_dict() for k, v in self.splits.items()},
            "labelled": self.labelled,
            "label_fraction": self.label_fraction,
            **self.seeds,
            "removed": self.removed,
            "warnings": self.warnings,
            "ignored_files_by_extension": self.ignored_files_by_extension,
            "classes_missing_from_splits": self.classes_missing_from_splits,
            "bad_files": [{"file": f, "reason": r} for f, r in self.bad_files],
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "problems": self.problems,
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    def format(self) -> str:
        lines = [
            f"dataset {self.dataset} at {self.root}",
            f"  {len(self.classes)} classes{' (multi-label)' if self.multi_label else ''}: "
            + ", ".join(self.classes),
        ]
        for name, split in self.splits.items():
            sizes = ", ".join(f"{s} ({n})" for s, n in list(split.sizes.items())[:4]) or "-"
            more = len(split.sizes) - 4
            if more > 0:
                sizes += f", and {more} other sizes"
            counts = ", ".join(f"{c} {n}" for c, n in split.class_counts.items())
            lines.append(f"  {name:5s} {split.images:7d} images | {counts}")
            lines.append(f"        sizes seen: {sizes}")
            if name in self.labelled:
                seed = self.seeds.get("label_seed")
                drawn = "" if seed is None else f" (label_seed {seed})"
                lines.append(f"        labelled for fine-tuning: {self.labelled[name]}{drawn}")
        for title, entries in (("unreadable", self.bad_files), ("skipped", self.skipped)):
            if entries:
                lines.append(f"  {title} files: {len(entries)}")
                lines += [f"    {f}: {r}" for f, r in entries[:50]]
                if len(entries) > 50:
                    lines.append(f"    ... and {len(entries) - 50} more")
        if self.ignored_files_by_extension:
            counts = ", ".join(f"{e} {n}" for e, n in self.ignored_files_by_extension.items())
            total = sum(self.ignored_files_by_extension.values())
            lines.append(f"  ignored {total} file(s) that are not images: {counts}")
        lines += ["  " + line for line in format_removed(self.removed)]
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines.append("  OK" if self.ok else "  NOT OK")
        return "\n".join(lines)


def summarise_split(
    index: SampleIndex, indices: np.ndarray, sizes: list[tuple[int, int] | None]
) -> SplitSummary:
    counts = index.class_counts(indices)
    seen = Counter(f"{sizes[i][0]}x{sizes[i][1]}" for i in indices if sizes[i] is not None)
    return SplitSummary(
        images=len(indices),
        class_counts={c: int(n) for c, n in zip(index.classes, counts)},
        sizes=dict(seen.most_common()),
    )
