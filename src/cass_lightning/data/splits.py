"""Seeded stratified splits, nested label fractions and class weights.

- Splits: the distribution's official split where it has one; otherwise a seeded stratified
  split (ISIC-2019 in the paper: 80/10/10 with seed 77). A missing validation split is carved
  out of the training split the same way.
- Label fractions: per class, one seeded permutation of the training samples; a fraction takes
  its first ``ceil(fraction * n)`` entries (at least one). Larger fractions therefore contain the
  smaller ones (the 1% images are inside the 10%), and every class keeps an example.
- Class weights: inverse frequency, or the paper's raw counts min-max scaled into [0.2, 1].
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from cass_lightning.checks import check_choice
from cass_lightning.data.index import SPLITS, SampleIndex
from cass_lightning.io import write_csv

CLASS_WEIGHT_KINDS = ("none", "inverse", "paper")


def _stratified_take(strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask choosing ``round(fraction * n)`` of each stratum, at random."""
    chosen = np.zeros(len(strata), dtype=bool)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        take = round(fraction * len(members))
        if take:
            chosen[rng.permutation(members)[:take]] = True
    return chosen


def assign_splits(
    index: SampleIndex, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 77
) -> np.ndarray:
    """The split (``train``/``val``/``test``) of every sample.

    Official splits are kept. Without any, ``test_fraction`` and ``val_fraction`` of each class
    are drawn (fractions of the whole set). With an official test split but no validation split,
    ``val_fraction`` of the training samples becomes the validation split.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data"
        )
    rng = np.random.default_rng(seed)
    strata = index.stratum()
    if index.splits is not None:
        splits = np.asarray(index.splits, dtype=object).copy()
        splits[splits == None] = "train"  # noqa: E711 - elementwise comparison
    else:
        splits = np.full(len(index), "train", dtype=object)
        test = _stratified_take(strata, test_fraction, rng)
        splits[test] = "test"
    if not (splits == "val").any() and val_fraction > 0:
        train = np.flatnonzero(splits == "train")
        share = val_fraction if index.splits is not None else val_fraction / (1 - test_fraction)
        val = _stratified_take(strata[train], share, rng)
        splits[train[val]] = "val"
    return splits.astype(str)


def label_subset(
    index: SampleIndex, train_indices: np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """Indices (into the index) of the labelled part of the training split, sorted.

    Stratified and nested across fractions for the same seed; at least one example per class
    present in the training split (a warning names the classes that were raised to one).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    train_indices = np.asarray(train_indices, dtype=np.int64)
    if fraction == 1.0:
        return np.sort(train_indices)
    rng = np.random.default_rng(seed)
    strata = index.stratum()[train_indices]
    chosen: list[np.ndarray] = []
    raised: list[str] = []
    for value in np.unique(strata):
        members = train_indices[strata == value]
        exact = fraction * len(members)
        take = max(1, math.ceil(exact - 1e-9))
        if exact < 1:
            raised.append(index.classes[value] if value < index.num_classes else "<no label>")
        chosen.append(rng.permutation(members)[:take])
    if raised:
        warnings.warn(
            f"label_fraction={fraction} gives no example of {raised}; "
            "raised to one labelled example each",
            stacklevel=2,
        )
    return np.sort(np.concatenate(chosen))


def classes_missing_from_splits(index: SampleIndex, splits: np.ndarray) -> dict[str, list[str]]:
    """``{split: [class, ...]}``: the classes with images in the dataset but none in ``val`` or
    ``test`` (a split left empty as a whole is not listed). Such a class is never evaluated
    there, and macro averages over that split are taken over the other classes."""
    total = index.class_counts()
    missing: dict[str, list[str]] = {}
    for split in SPLITS[1:]:
        members = np.flatnonzero(np.asarray(splits) == split)
        if not len(members):
            continue
        counts = index.class_counts(members)
        absent = [name for c, name in enumerate(index.classes) if total[c] and not counts[c]]
        if absent:
            missing[split] = absent
    return missing


def class_weights(counts: np.ndarray, kind: str = "inverse") -> np.ndarray:
    """Per-class loss weights from class counts.

    ``inverse``: ``n / (C * count)`` (1.0 for balanced data). ``paper``: the reference's raw
    counts min-max scaled into [0.2, 1] (as the notebooks compute it). ``none``: ones.
    Classes without examples get weight 0 (they cannot contribute to the loss anyway).
    """
    check_choice("class weight kind", kind, CLASS_WEIGHT_KINDS)
    counts = np.asarray(counts, dtype=np.float64)
    if kind == "none":
        return np.ones_like(counts, dtype=np.float32)
    present = counts > 0
    if not present.any():
        raise ValueError("class_weights: every class count is zero")
    weights = np.zeros_like(counts)
    if kind == "inverse":
        weights[present] = counts.sum() / (present.sum() * counts[present])
    else:  # paper
        low, high = counts[present].min(), counts[present].max()
        scaled = np.ones_like(counts) if high == low else (counts - low) / (high - low)
        weights[present] = 0.2 + 0.8 * scaled[present]
    return weights.astype(np.float32)


def write_split_csv(
    index: SampleIndex,
    splits: np.ndarray,
    labelled: np.ndarray,
    path: str | Path,
    label_seed: int | None = None,
) -> Path:
    """Save which sample went where (and which training samples carry labels) as CSV; the
    ``label_seed`` column says which seed drew the labelled subset (empty when not given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_labelled = np.zeros(len(index), dtype=bool)
    is_labelled[np.asarray(labelled, dtype=np.int64)] = True
    seed = "" if label_seed is None else int(label_seed)
    rows = []
    for i, key in enumerate(index.keys):
        if index.multi_label:
            label = "|".join(index.classes[c] for c in np.flatnonzero(index.targets[i] > 0))
        else:
            label = index.classes[int(index.targets[i])]
        rows.append([key, splits[i], int(is_labelled[i]), label, seed])
    # Through write_csv: a class or file named like a formula (=..., +1, @x) is shown as text.
    write_csv(path, ["key", "split", "labelled", "label", "label_seed"], rows)
    return path
