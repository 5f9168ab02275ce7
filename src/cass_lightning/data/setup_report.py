"""The data report of a datamodule's setup: what was read, left out, split and labelled, and
the warnings a user needs (classes that a split never evaluates, classes the removals emptied)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cass_lightning.data.index import SampleIndex
from cass_lightning.data.removal import emptied_classes, removed_samples, summarise_removed
from cass_lightning.data.splits import classes_missing_from_splits
from cass_lightning.data.validate import DataReport, summarise_split


def small_class_warnings(index: SampleIndex, report: DataReport) -> list[str]:
    """One sentence per (split, class) with images in the dataset but none in that split,
    unless the removals already said so: single-label macro-F1 there is averaged over the
    other classes; multi-label macro-F1 counts the label as 0 (torchmetrics' conventions)."""
    total = index.class_counts()
    effect = (
        "macro-F1 counts it as 0" if index.multi_label else "macro-F1 is over the other classes"
    )
    messages = []
    for split, names in report.classes_missing_from_splits.items():
        for name in names:
            said = f"class {name} has no image in the {split} split"
            if any(w.startswith(said) for w in report.warnings):
                continue
            count = int(total[index.classes.index(name)])
            messages.append(
                f"{said} ({count} image(s) in the whole dataset); it is never evaluated "
                f"there and {split} {effect}"
            )
    return messages


def build_data_report(
    full: SampleIndex,
    index: SampleIndex,
    bad: dict[str, str],
    sizes: Sequence[Any],
    keep: np.ndarray,
    splits: np.ndarray,
    labelled: np.ndarray,
    hp: Any,
) -> DataReport:
    """The report of one setup: ``full`` is the index as found, ``index`` what is kept
    (``keep`` over ``full``), ``bad`` the unreadable keys with reasons, ``sizes`` each image's
    size where known, ``splits`` / ``labelled`` over ``index``, ``hp`` the datamodule's
    hyperparameters."""
    removed = removed_samples(full, bad) if hp.on_bad_file == "skip" else []
    official = set() if full.splits is None else {str(s) for s in full.splits}
    report = DataReport(
        dataset=index.name,
        root=str(index.root),
        classes=list(index.classes),
        multi_label=index.multi_label,
        bad_files=[(full.reader.describe(k), why) for k, why in bad.items()],
        skipped=list(full.skipped),
        seeds={"split_seed": int(hp.split_seed), "label_seed": int(hp.label_seed)},
        label_fraction=float(hp.label_fraction),
        removed=summarise_removed(removed),
        warnings=emptied_classes(index, splits, removed, official),
        ignored_files_by_extension=dict(full.ignored),
        classes_missing_from_splits=classes_missing_from_splits(index, splits),
    )
    report.warnings += small_class_warnings(index, report)
    kept_sizes = [size for size, ok in zip(sizes, keep) if ok]
    for name in ("train", "val", "test"):
        members = np.flatnonzero(splits == name)
        if len(members):
            report.splits[name] = summarise_split(index, members, kept_sizes)
    report.labelled["train"] = len(labelled)
    if bad and hp.on_bad_file == "error":
        report.problems.append(
            f"{len(bad)} unreadable image(s); fix or remove them, or set "
            "data.on_bad_file=skip to train without them"
        )
    return report
