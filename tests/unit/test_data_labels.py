"""The labelled subset: seeded by the run, weighted by the training split, trainable when small."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cass_lightning.data import ImageFolderDataModule
from cass_lightning.data.splits import class_weights
from data_fixtures import image


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Training images only: a 40, b 20, c 5 (so 1% labels give one image per class)."""
    root = tmp_path_factory.mktemp("labels") / "data"
    for name, count in {"a": 40, "b": 20, "c": 5}.items():
        for i in range(count):
            image(root / "train" / name / f"{name}_{i:02d}.png", size=(6, 6), seed=i)
    return root


def _dm(root: Path, **kwargs) -> ImageFolderDataModule:
    options = dict(img_size=8, batch_size=16, val_fraction=0.0, check_images="none")
    dm = ImageFolderDataModule(root, **{**options, **kwargs})
    dm.setup()
    return dm


# --- label_seed follows the run's seed (the config side is in test_data_pipelines) ---------------
def test_label_seeds_draw_different_nested_subsets_and_are_recorded(root, tmp_path) -> None:
    subsets = {}
    for seed in (0, 1):
        small = _dm(root, label_fraction=0.1, label_seed=seed, output_dir=tmp_path / f"s{seed}")
        large = _dm(root, label_fraction=0.5, label_seed=seed)
        assert set(small.labelled) <= set(large.labelled)  # the 10% inside the 50%
        subsets[seed] = set(small.labelled.tolist())
        rows = list(csv.DictReader((tmp_path / f"s{seed}" / "splits.csv").open()))
        assert {row["label_seed"] for row in rows} == {str(seed)}
        report = json.loads((tmp_path / f"s{seed}" / "data_report.json").read_text())
        assert report["label_seed"] == seed and report["split_seed"] == 77
        assert report["label_fraction"] == 0.1
    assert subsets[0] != subsets[1]


# --- class weights come from the training split ------------------------------------------------
@pytest.mark.parametrize("kind", ["paper", "inverse"])
def test_class_weights_come_from_the_training_split_at_any_label_fraction(root, kind) -> None:
    expected = torch.from_numpy(class_weights([40, 20, 5], kind))
    for fraction in (0.01, 0.1, 1.0):
        dm = _dm(root, label_fraction=fraction)
        torch.testing.assert_close(dm.class_weights(kind), expected)
    one_each = _dm(root, label_fraction=0.01)
    assert one_each.index.class_counts(one_each.labelled).tolist() == [1, 1, 1]
    assert len(set(one_each.class_weights(kind).tolist())) == 3  # not all equal


# --- a labelled set smaller than one batch still trains ------------------------------------------
def test_labelled_set_below_one_batch_is_one_smaller_batch(root, capsys) -> None:
    dm = _dm(root, label_fraction=0.01)  # 3 labelled images, batch 16
    batches = [labels.tolist() for _, labels in dm.labelled_train_dataloader()]
    assert len(batches) == 1 and sorted(batches[0]) == [0, 1, 2]
    assert (
        "fewer than one batch of 16: each epoch trains on one batch of 3" in capsys.readouterr().err
    )
    finetuning = _dm(root, label_fraction=0.01, train_subset="labelled")
    assert len(list(finetuning.train_dataloader())) == 1


def test_pretraining_keeps_refusing_a_split_below_one_batch(root) -> None:
    dm = _dm(root, batch_size=128)
    with pytest.raises(ValueError, match="65 images, fewer than one batch of 128"):
        dm.train_dataloader()


def test_a_last_batch_of_one_image_is_dropped(root) -> None:
    dm = _dm(root, label_fraction=0.1, batch_size=3, drop_last=False)  # 4 + 2 + 1 = 7 labelled
    sizes = [len(labels) for _, labels in dm.labelled_train_dataloader()]
    assert sizes == [3, 3]
    dm = _dm(root, label_fraction=0.1, batch_size=4, drop_last=False)
    assert [len(labels) for _, labels in dm.labelled_train_dataloader()] == [4, 3]


def test_a_single_labelled_image_is_refused_by_name(tmp_path) -> None:
    for i in range(30):
        image(tmp_path / "one" / "train" / "only" / f"x{i}.png", size=(6, 6), seed=i)
    dm = _dm(tmp_path / "one", label_fraction=0.01)
    with pytest.raises(ValueError, match=r"labelled training subset of .* has 1 image\(s\)"):
        dm.labelled_train_dataloader()
    assert len(dm.labelled_eval_dataloader().dataset) == 1  # evaluation is unaffected


def test_below_one_batch_per_device_under_ddp(root) -> None:
    dm = _dm(root, label_fraction=0.01, batch_size=8)
    dm.trainer = SimpleNamespace(world_size=2, is_global_zero=True)
    loader = dm.labelled_train_dataloader()
    assert loader.batch_size == 2 and loader.drop_last is False  # ceil(3 / 2) images per device
