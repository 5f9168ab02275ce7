"""MedicalDataModule: splits, label fractions, bad files, cache, loaders, outputs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from cass_lightning.data import (
    CheckSettings,
    ImageFolderDataModule,
    LoaderSettings,
    MedicalDataModule,
    SplitSettings,
    SyntheticDataModule,
    ViewSettings,
)
from cass_lightning.data.cache import CachedReader
from data_fixtures import autoimmune, image, npz, snapshot


def tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for name, count in counts.items():
        for i in range(count):
            image(root / name / f"img_{i:03d}.png", size=(12 + i % 3, 10), seed=seed + i)
    return root


def make_dm(root: Path, **kwargs) -> MedicalDataModule:
    defaults = dict(img_size=16, batch_size=4, check_images="full")
    return ImageFolderDataModule(root, **{**defaults, **kwargs})


@pytest.fixture
def split_root(tmp_path: Path) -> Path:
    tree(tmp_path / "data" / "train", {"benign": 3, "malignant": 3, "other": 2})
    tree(tmp_path / "data" / "val", {"benign": 1, "malignant": 2, "other": 1}, seed=50)
    return tmp_path / "data"


def test_official_split_folders_give_batches_and_deterministic_val(split_root):
    dm = make_dm(split_root, batch_size=3, val_fraction=0.0)
    dm.setup("fit")
    assert dm.classes == ["benign", "malignant", "other"] and dm.num_classes == 3
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 8 images, drop_last
    for images, labels in batches:
        assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and 0 <= int(labels.min()) <= int(labels.max()) < 3
    val = dm.val_dataloader()
    assert sorted(torch.cat([y for _, y in val]).tolist()) == [0, 1, 1, 2]
    first, second = (torch.cat([x for x, _ in val]) for _ in range(2))
    assert torch.equal(first, second)
    assert dm.test_dataloader() == []


def test_flat_folder_gets_seeded_stratified_splits_written_to_the_run(tmp_path):
    root = tree(tmp_path / "data", {"a": 20, "b": 10})
    out = tmp_path / "run"
    dm = make_dm(root, output_dir=out, val_fraction=0.1, test_fraction=0.2, split_seed=77)
    dm.setup()
    assert [len(dm.split_indices(s)) for s in ("train", "val", "test")] == [21, 3, 6]
    rows = list(csv.DictReader((out / "splits.csv").open()))
    assert len(rows) == 30 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert sum(r["split"] == "test" and r["label"] == "b" for r in rows) == 2
    report = json.loads((out / "data_report.json").read_text())
    assert report["splits"]["train"]["images"] == 21
    assert report["splits"]["test"]["class_counts"] == {"a": 4, "b": 2}
    assert report["splits"]["train"]["sizes"]  # sizes seen were recorded
    again = make_dm(root, val_fraction=0.1, test_fraction=0.2, split_seed=77)
    again.setup()
    assert (again.splits == dm.splits).all()


def test_pretraining_sees_every_training_image_whatever_the_label_fraction(tmp_path):
    root = tree(tmp_path / "data" / "train", {"a": 40, "b": 20}).parent
    full = make_dm(root, val_fraction=0.0, label_fraction=1.0)
    tenth = make_dm(root, val_fraction=0.0, label_fraction=0.1)
    full.setup()
    tenth.setup()
    assert len(tenth.train_dataloader().dataset) == len(full.train_dataloader().dataset) == 60
    assert len(tenth.labelled) == 6
    assert tenth.labelled_train_dataloader().dataset.keys == [
        tenth.index.keys[i] for i in tenth.labelled
    ]
    assert set(tenth.labelled) <= set(full.labelled)
    weights = tenth.class_weights("inverse")
    torch.testing.assert_close(weights, torch.tensor([0.75, 1.5]))


def test_bad_files_are_all_named_before_training(tmp_path):
    root = tree(tmp_path / "data" / "train", {"a": 4, "b": 4}).parent
    good = root / "train" / "a" / "img_000.png"
    (root / "train" / "a" / "zero.png").write_bytes(b"")
    (root / "train" / "b" / "text.jpg").write_text("not an image at all")
    image(root / "train" / "b" / "big.jpg", size=(64, 64))
    data = (root / "train" / "b" / "big.jpg").read_bytes()
    (root / "train" / "b" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "train" / "b" / "big.jpg").unlink()
    out = tmp_path / "run"
    with pytest.raises(ValueError) as info:
        make_dm(root, val_fraction=0.0, output_dir=out).setup()
    message = str(info.value)
    for name in ("zero.png", "text.jpg", "trunc.jpg"):
        assert name in message
    assert "on_bad_file=skip" in message and str(good) not in message
    report = json.loads((out / "data_report.json").read_text())
    assert len(report["bad_files"]) == 3 and report["problems"]

    skipping = make_dm(root, val_fraction=0.0, on_bad_file="skip", output_dir=tmp_path / "run2")
    skipping.setup()
    assert len(skipping.train_dataloader().dataset) == 8
    skipped = list(csv.DictReader((tmp_path / "run2" / "skipped.csv").open()))
    assert sorted(Path(r["file"]).name for r in skipped) == ["text.jpg", "trunc.jpg", "zero.png"]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "L", "I;16", "1"])
def test_image_modes_are_converted_not_rejected(tmp_path, mode):
    root = tree(tmp_path / "data" / "train", {"a": 2}).parent
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 12, 3), np.uint8))
    if mode == "I;16":
        odd = Image.fromarray(np.arange(120, dtype=np.uint16).reshape(10, 12) * 500)
    elif mode == "P":
        odd = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        odd = rgb.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else (".tif" if mode == "I;16" else ".png")
    odd.save(root / "train" / "a" / f"odd{suffix}")
    dm = make_dm(root, val_fraction=0.0, batch_size=3)
    dm.setup()
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 16, 16) and torch.isfinite(images).all()


def test_nothing_under_the_dataset_root_changes(tmp_path):
    root = tree(tmp_path / "data", {"a": 6, "b": 6})
    before = snapshot(root)
    dm = make_dm(root, cache_dir=tmp_path / "cache", output_dir=tmp_path / "run", num_workers=0)
    dm.prepare_data()
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for _ in loader:
            pass
    assert snapshot(root) == before


def test_cache_serves_the_same_eval_pixels(tmp_path):
    root = tree(tmp_path / "data", {"a": 6, "b": 6})
    plain = make_dm(root)
    cached = make_dm(root, cache_dir=tmp_path / "cache")
    plain.setup()
    cached.setup()
    assert isinstance(cached.reader, CachedReader)
    x_plain = torch.cat([x for x, _ in plain.test_dataloader()])
    x_cached = torch.cat([x for x, _ in cached.test_dataloader()])
    torch.testing.assert_close(x_cached, x_plain, atol=0.05, rtol=0)  # resize rounding only
    with pytest.raises(ValueError, match="cache"):
        make_dm(root, cache_dir=tmp_path / "cache", cache_size=8)


def test_global_batch_is_split_over_devices(split_root):
    dm = make_dm(split_root, batch_size=4, val_fraction=0.0)
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=2, is_global_zero=True)
    assert dm.per_device_batch_size() == 2
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 2
    dm.trainer = SimpleNamespace(world_size=3, is_global_zero=True)
    with pytest.raises(ValueError, match="multiple of the device count"):
        dm.train_dataloader()


def test_settings_groups_build_the_same_datamodule_as_flat_keys(split_root):
    flat = make_dm(split_root, batch_size=2, val_fraction=0.0, label_fraction=0.5,
                   on_bad_file="skip", train_views="pair")  # fmt: skip
    grouped = ImageFolderDataModule.from_settings(
        split_root, loader=LoaderSettings(batch_size=2), checks=CheckSettings(on_bad_file="skip"),
        split=SplitSettings(val_fraction=0.0, label_fraction=0.5),
        views=ViewSettings(img_size=16, train_views="pair"),
    )  # fmt: skip
    # The record stays flat (configs, checkpoints); the groups hold what the code reads.
    assert dict(grouped.hparams) == {**dict(flat.hparams), "check_images": "full"}
    assert grouped.split == flat.split == SplitSettings(val_fraction=0.0, label_fraction=0.5)
    assert (grouped.checks.on_bad_file, grouped.views.train_views) == ("skip", "pair")
    flat.setup(), grouped.setup()
    assert np.array_equal(flat.labelled, grouped.labelled) and len(flat.labelled) == 5  # of 8
    views, _ = next(iter(grouped.train_dataloader()))
    assert [tuple(v.shape) for v in views] == [(2, 3, 16, 16)] * 2
    with pytest.raises(TypeError, match="batch_size given both flat and in a settings group"):
        ImageFolderDataModule.from_settings(split_root, batch_size=2, loader=LoaderSettings())
    for bad, match in ((lambda: LoaderSettings(batch_size=0), r"data\.batch_size must be"),
                       (lambda: SplitSettings(label_fraction=0), "label_fraction must be"),
                       (lambda: CheckSettings(on_bad_file="ignore"), "on_bad_file"),
                       (lambda: ViewSettings(train_views="three"), "train_views")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            bad()
    assert ViewSettings(train_views=None).train_views == "paper"


def test_too_small_training_split_is_explained(tmp_path):
    root = tree(tmp_path / "data" / "train", {"a": 2, "b": 1}).parent
    dm = make_dm(root, batch_size=4, val_fraction=0.0)
    dm.setup()
    with pytest.raises(ValueError, match="3 images, fewer than one batch of 4"):
        dm.train_dataloader()


def test_loader_options_and_setup_order(split_root):
    dm = make_dm(split_root, batch_size=2, persistent_workers=True)
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and loader.persistent_workers is False
    assert loader.pin_memory == torch.cuda.is_available()
    assert make_dm(split_root, num_workers=-1).num_workers == min(4, os.cpu_count() or 1)
    for bad in (dict(num_workers=-2), dict(batch_size=0), dict(on_bad_file="ignore"),
                dict(check_images="some"), dict(label_fraction=0.0)):  # fmt: skip
        with pytest.raises(ValueError):
            make_dm(split_root, **bad)
    with pytest.raises(ValueError, match="unknown data layout"):
        MedicalDataModule("imagenet", split_root)


def test_multi_label_batches_are_multi_hot(tmp_path):
    root = autoimmune(tmp_path / "auto")
    dm = MedicalDataModule("autoimmune", root, img_size=16, batch_size=2, val_fraction=0.0,
                           test_fraction=0.0)  # fmt: skip
    dm.setup()
    assert dm.multi_label and dm.classes == ["DM", "IBM", "NORMAL", "PM"]
    _images, targets = next(iter(dm.train_dataloader()))
    assert targets.shape == (2, 4) and targets.dtype == torch.float32
    assert set(targets.unique().tolist()) <= {0.0, 1.0}


def test_medmnist_uses_official_splits(tmp_path):
    npz(tmp_path / "mm", "dermamnist_64.npz")
    from cass_lightning.data import MedMNISTDataModule

    dm = MedMNISTDataModule(tmp_path / "mm", name="dermamnist", size=64, img_size=16, batch_size=2)
    dm.setup()
    assert [len(dm.split_indices(s)) for s in ("train", "val", "test")] == [4, 2, 3]
    images, _labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16)


def test_synthetic_module_writes_once_and_keeps_labels(tmp_path):
    dm = SyntheticDataModule(tmp_path, images_per_class=2, val_images_per_class=1, image_size=16,
                             img_size=16, batch_size=4)  # fmt: skip
    dm.prepare_data()
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["synthetic-n2-v1-s16-seed77"]
    dm.setup("fit")
    assert dm.num_classes == 6 and "ring_lesion" in dm.classes
    assert len(dm.val_dataloader().dataset) == 6
    assert len(dm.train_dataloader().dataset) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == written
