"""What ``on_bad_file=skip`` left out, per split and class, and the classes it emptied.

Unreadable images are dropped *before* the splits are drawn, so a seeded stratified split
never hands a class only unreadable images in val or test. What was dropped is still worth
seeing: this module counts it per split (the official split, or "before splitting" where the
splits are drawn afterwards) and per class, and names every class that has no image left in a
split it would have had images in, since metrics then silently skip that class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from cass_lightning.data.index import SPLITS, SampleIndex

#: The bucket of images removed where the splits are drawn after removal.
BEFORE_SPLIT = "before splitting"


@dataclass(frozen=True)
class Removed:
    """One left-out sample: where it is, why, its official split (or None) and its labels."""

    where: str
    why: str
    split: str | None
    labels: tuple[str, ...]


def removed_samples(index: SampleIndex, bad: dict[str, str]) -> list[Removed]:
    """The entries the layout skipped (missing files) and the unreadable ``bad`` keys."""
    removed = [
        Removed(where, why, *index.skipped_meta.get(where, (None, ())))
        for where, why in index.skipped
    ]
    positions = {key: i for i, key in enumerate(index.keys)}
    for key, why in bad.items():
        i = positions[key]
        split = None if index.splits is None else str(index.splits[i]) or None
        removed.append(Removed(index.reader.describe(key), why, split, _labels(index, i)))
    return removed


def _labels(index: SampleIndex, i: int) -> tuple[str, ...]:
    if index.multi_label:
        return tuple(index.classes[c] for c in np.flatnonzero(index.targets[i] > 0))
    return (index.classes[int(index.targets[i])],)


def summarise_removed(removed: list[Removed]) -> dict[str, Any]:
    """``{"images": n, "by_split": {split: n}, "by_class": {split: {class: n}}}``."""
    by_split: Counter[str] = Counter()
    by_class: dict[str, Counter[str]] = {}
    for entry in removed:
        bucket = entry.split or BEFORE_SPLIT
        by_split[bucket] += 1
        by_class.setdefault(bucket, Counter()).update(entry.labels)
    order = [*SPLITS, BEFORE_SPLIT]
    return {
        "images": len(removed),
        "by_split": {name: by_split[name] for name in order if by_split[name]},
        "by_class": {
            name: dict(sorted(by_class[name].items())) for name in order if name in by_class
        },
    }


def _feeds(removed_split: str | None, split: str, official: set[str]) -> bool:
    """Whether an image removed from ``removed_split`` could have landed in ``split``."""
    if removed_split is None or removed_split == split:
        return True
    # A validation split carved out of the official training split.
    return split == "val" and "val" not in official and removed_split == "train"


def emptied_classes(
    index: SampleIndex, splits: np.ndarray, removed: list[Removed], official: set[str]
) -> list[str]:
    """One sentence per (split, class) that has no image left where removed images of that
    class would have been; and per class with no image left at all."""
    if not removed:
        return []
    messages: list[str] = []
    total = index.class_counts()
    lost_anywhere = Counter(label for entry in removed for label in entry.labels)
    for c, name in enumerate(index.classes):
        if total[c] == 0 and lost_anywhere[name]:
            messages.append(
                f"class {name} has no image left at all: all {lost_anywhere[name]} of its "
                "images were left out as unreadable or missing"
            )
    for split in SPLITS:
        members = np.flatnonzero(splits == split)
        lost = Counter(
            label for entry in removed if _feeds(entry.split, split, official)
            for label in entry.labels
        )  # fmt: skip
        if not len(members):
            if split in official and any(entry.split == split for entry in removed):
                messages.append(f"the {split} split has no image left after the removals")
            continue
        counts = index.class_counts(members)
        for c, name in enumerate(index.classes):
            if counts[c] == 0 and lost[name] and total[c] > 0:
                messages.append(
                    f"class {name} has no image in the {split} split after {lost[name]} of "
                    f"its images were left out; its {split} metrics will be missing"
                )
    return messages


def format_removed(summary: dict[str, Any]) -> list[str]:
    """Readable lines for :func:`summarise_removed`'s result (empty when nothing was left out)."""
    if not summary.get("images"):
        return []
    lines = [f"left out {summary['images']} image(s) (on_bad_file=skip):"]
    for bucket, count in summary["by_split"].items():
        classes = ", ".join(f"{c} {n}" for c, n in summary["by_class"].get(bucket, {}).items())
        lines.append(f"  {bucket}: {count}" + (f" ({classes})" if classes else ""))
    return lines
