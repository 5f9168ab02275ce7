"""Splits, label fractions and class weights on indexes with known structure."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from cass_lightning.data.index import FileReader, SampleIndex
from cass_lightning.data.splits import assign_splits, class_weights, label_subset, write_split_csv


def make_index(counts: list[int], splits: list[str] | None = None) -> SampleIndex:
    targets = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    keys = [f"img_{i:05d}.png" for i in range(len(targets))]
    return SampleIndex(
        name="t",
        root=Path("/nonexistent"),
        keys=keys,
        targets=targets,
        classes=[f"c{i}" for i in range(len(counts))],
        reader=FileReader(Path("/nonexistent")),
        splits=None if splits is None else np.array(splits, dtype=object),
    )


def test_isic_style_split_is_80_10_10_stratified_and_seeded():
    index = make_index([500, 200, 100, 50, 30, 20, 10, 10])
    splits = assign_splits(index, val_fraction=0.1, test_fraction=0.1, seed=77)
    n = len(index)
    assert abs((splits == "test").sum() - 0.1 * n) <= 8
    assert abs((splits == "val").sum() - 0.1 * n) <= 8
    for c, count in enumerate([500, 200, 100, 50, 30, 20, 10, 10]):
        members = index.targets == c
        assert (splits[members] == "test").sum() == round(0.1 * count)
    again = assign_splits(index, 0.1, 0.1, seed=77)
    other = assign_splits(index, 0.1, 0.1, seed=78)
    assert (again == splits).all() and not (other == splits).all()


def test_official_test_split_is_kept_and_val_comes_from_train():
    official = ["train"] * 80 + ["test"] * 20
    index = make_index([50, 50], official)
    splits = assign_splits(index, val_fraction=0.1, test_fraction=0.3, seed=0)
    assert (splits[80:] == "test").all()  # official test untouched, no extra test drawn
    assert (splits == "test").sum() == 20
    assert (splits[:80] == "val").sum() == 8  # 10% of the official training split


def test_official_val_split_is_not_resampled():
    index = make_index([10, 10], ["train"] * 8 + ["val"] * 2 + ["train"] * 8 + ["val"] * 2)
    splits = assign_splits(index, val_fraction=0.5, test_fraction=0.0)
    assert (splits == "val").sum() == 4


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (-0.1, 0.1), (0.1, 1.0)])
def test_impossible_fractions_are_refused(val, test):
    with pytest.raises(ValueError, match="fraction"):
        assign_splits(make_index([10, 10]), val_fraction=val, test_fraction=test)


def test_label_fractions_nest_stratify_and_are_seeded():
    index = make_index([400, 300, 200, 100])
    train = np.arange(len(index))
    one = label_subset(index, train, 0.01, seed=3)
    ten = label_subset(index, train, 0.1, seed=3)
    full = label_subset(index, train, 1.0, seed=3)
    assert set(one) <= set(ten) <= set(full)
    assert len(full) == len(index)
    assert list(index.class_counts(ten)) == [40, 30, 20, 10]
    assert list(index.class_counts(one)) == [4, 3, 2, 1]
    assert (label_subset(index, train, 0.1, seed=3) == ten).all()
    assert not (label_subset(index, train, 0.1, seed=4) == ten).all()


def test_tiny_fraction_keeps_one_example_per_class_with_a_warning():
    index = make_index([300, 5, 2])
    with pytest.warns(UserWarning, match=r"\['c1', 'c2'\]"):
        chosen = label_subset(index, np.arange(len(index)), 0.01, seed=0)
    assert list(index.class_counts(chosen)) == [3, 1, 1]


def test_no_warning_when_every_class_gets_an_example():
    index = make_index([100, 100])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        label_subset(index, np.arange(200), 0.1)


def test_labels_only_come_from_the_given_training_indices():
    index = make_index([100, 100])
    train = np.arange(0, 200, 2)
    chosen = label_subset(index, train, 0.2, seed=1)
    assert set(chosen) <= set(train)
    with pytest.raises(ValueError, match="label_fraction"):
        label_subset(index, train, 0.0)


def test_multi_label_stratifies_on_the_rarest_label():
    targets = np.zeros((10, 3), dtype=np.float32)
    targets[:, 0] = 1
    targets[8:, 2] = 1  # label 2 is rare; rows 8 and 9 stratify on it
    index = SampleIndex("m", Path("/x"), [str(i) for i in range(10)], targets,
                        ["a", "b", "c"], FileReader(Path("/x")))  # fmt: skip
    strata = index.stratum()
    assert list(strata) == [0] * 8 + [2, 2]
    with pytest.warns(UserWarning, match="raised to one"):
        chosen = label_subset(index, np.arange(10), 0.1, seed=0)
    assert len(set(chosen) & {8, 9}) == 1 and len(chosen) == 2


def test_class_weights_inverse_and_paper():
    counts = np.array([100, 50, 10, 0])
    inverse = class_weights(counts, "inverse")
    np.testing.assert_allclose(inverse[:3], 160 / (3 * np.array([100, 50, 10])), rtol=1e-6)
    assert inverse[3] == 0
    paper = class_weights(counts, "paper")
    np.testing.assert_allclose(paper[:3], [1.0, 0.2 + 0.8 * 40 / 90, 0.2], rtol=1e-6)
    assert (class_weights(counts, "none") == 1).all()
    with pytest.raises(ValueError, match="class weight kind"):
        class_weights(counts, "sqrt")


def test_split_csv_records_every_sample(tmp_path):
    index = make_index([3, 3])
    splits = assign_splits(index, 0.0, 0.34, seed=0)
    path = write_split_csv(index, splits, np.array([0, 3]), tmp_path / "run" / "splits.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["key"] for r in rows] == index.keys
    assert [r["split"] for r in rows] == list(splits)
    assert [r["labelled"] for r in rows] == ["1", "0", "0", "1", "0", "0"]
    assert rows[4]["label"] == "c1"
