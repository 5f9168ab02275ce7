"""Pretraining through every datamodule (fast_dev_run) and the cass-data app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from app_helpers import compose_app
from cass_lightning import CASSModule
from cass_lightning.apps.data import check
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.data import MedicalDataModule, build_index
from data_fixtures import ISIC_INPUT, autoimmune, brain, dermofit, image, isic, npz, snapshot


def folder(root: Path) -> Path:
    for split in ("train", "val"):
        for cls in ("benign", "malignant"):
            for i in range(4):
                image(root / split / cls / f"{cls}_{i}.png", size=(20, 16), seed=i)
    return root


def csv_layout(root: Path) -> Path:
    lines = ["path,label"]
    for i in range(8):
        image(root / "imgs" / f"x{i}.png", seed=i)
        lines.append(f"imgs/x{i}.png,{'yes' if i % 2 else 'no'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def isic_layout(root: Path) -> Path:
    isic(root)
    return root


# (layout, fixture builder, options)
LAYOUT_CASES = [
    ("isic2019", isic_layout, {}),
    ("brain_mri", lambda r: brain(r, per_class=3), {}),
    ("dermofit", dermofit, {}),
    ("autoimmune", autoimmune, {}),
    ("medmnist", lambda r: npz(r, "dermamnist_64.npz").parent, {"name": "dermamnist", "size": 64}),
    ("image_folder", folder, {}),
    ("csv", csv_layout, {"csv_file": "labels.csv"}),
    (
        "synthetic",
        lambda r: r,
        {"images_per_class": 2, "val_images_per_class": 1, "image_size": 16},
    ),
]


@pytest.mark.parametrize(
    ("layout", "build", "options"), LAYOUT_CASES, ids=[c[0] for c in LAYOUT_CASES]
)
def test_fast_dev_run_pretraining_through_each_layout(
    tmp_path, tiny_kwargs, layout, build, options
):
    root = build(tmp_path / layout)
    root.mkdir(parents=True, exist_ok=True)
    before = snapshot(root) if layout != "synthetic" else None
    dm = MedicalDataModule(
        layout, root, options=options, img_size=32, batch_size=2, val_fraction=0.2,
        test_fraction=0.0, output_dir=tmp_path / "run",
    )  # fmt: skip
    model = CASSModule(**tiny_kwargs)
    trainer = L.Trainer(fast_dev_run=True, accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert trainer.callback_metrics["train/loss"] >= 0
    assert (tmp_path / "run" / "splits.csv").is_file()
    if before is not None:
        assert snapshot(root) == before


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")))
def test_every_data_config_composes_into_pretraining(tmp_path, name):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pretrain", overrides=[f"data={name}", "data.root=/somewhere"])
    assert cfg.data._target_.startswith("cass_lightning.data.")
    assert cfg.data.img_size == cfg.model.img_size


def test_check_prints_a_summary_per_split(tmp_path, capsys):
    brain(tmp_path / "data" / "brain_mri", per_class=4)
    cfg = compose_app(
        tmp_path,
        config_name="data_app",
        output_dir=tmp_path / "out",
        overrides=["+command=check", "data=brain_mri", "data.val_fraction=0.25"],
    )
    assert check(cfg) == 0
    out = capsys.readouterr().out
    assert "dataset brain_mri" in out and "4 classes: glioma, meningioma, notumor, pituitary" in out
    assert "train      12 images | glioma 3, meningioma 3, notumor 3, pituitary 3" in out
    assert "val         4 images" in out and "test       16 images" in out
    assert "sizes seen: 12x10 (1), 16x10 (1)" in out and "and 8 other sizes" in out
    assert out.rstrip().endswith(str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["dataset"] == "brain_mri" and report["splits"]["test"]["images"] == 16


def test_check_fails_with_the_list_of_bad_files(tmp_path, capsys):
    root = isic(tmp_path / "data" / "ISIC2019")
    (root / ISIC_INPUT / "ISIC_0000001.jpg").write_bytes(b"")
    (root / ISIC_INPUT / "ISIC_0000002.jpg").write_text("<html>not found</html>")
    cfg = compose_app(
        tmp_path,
        config_name="data_app",
        output_dir=tmp_path / "out",
        overrides=["+command=check", "data=isic2019"],
    )
    assert check(cfg) == 1
    err = capsys.readouterr().err
    assert "ISIC_0000001.jpg" in err and "ISIC_0000002.jpg" in err and "NOT OK" in err


def test_check_of_a_wrong_root_says_what_was_expected(tmp_path, capsys):
    (tmp_path / "data" / "ISIC2019" / "images").mkdir(parents=True)
    cfg = compose_app(
        tmp_path,
        config_name="data_app",
        output_dir=tmp_path / "out",
        overrides=["+command=check", "data=isic2019"],
    )
    assert check(cfg) == 1
    err = capsys.readouterr().err
    assert "ISIC_2019_Training_GroundTruth.csv" in err and "images" in err


@pytest.mark.slow
def test_cass_data_console_exit_codes(tmp_path):
    brain(tmp_path / "data" / "brain_mri")
    env = {**os.environ, "CASS_DATA_ROOT": str(tmp_path / "data"),
           "CASS_OUTPUT_ROOT": str(tmp_path / "runs")}  # fmt: skip
    run = [sys.executable, "-m", "cass_lightning.apps.data"]
    ok = subprocess.run([*run, "check", "data=brain_mri"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "glioma" in ok.stdout
    bad = subprocess.run([*run, "check", "data=brain_mri", "data.root=/no/such/root"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "/no/such/root" in bad.stderr
    usage = subprocess.run([*run, "verify"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "cass-data check" in usage.stderr


FILE_LAYOUTS = [c for c in LAYOUT_CASES if c[0] not in ("medmnist", "synthetic")]


def _corrupt(path: Path, how: str) -> None:
    """Replace an image by a broken one of the same name (and so the same extension)."""
    if how == "zero-byte":
        path.write_bytes(b"")
    elif how == "not-an-image":
        path.write_text("<html><body>404 Not Found</body></html>")
    else:  # truncated: a real image of this format cut in half
        fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
        big = image(path.with_name("tmp_big" + path.suffix), size=(96, 96))
        with Image.open(big) as im:
            im.save(path, format=fmt)
        big.unlink()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("layout", "build", "options"), FILE_LAYOUTS, ids=[c[0] for c in FILE_LAYOUTS]
)
def test_broken_images_in_each_layout_are_named_or_skipped(tmp_path, layout, build, options):
    root = build(tmp_path / layout)
    keys = build_index(layout, root, **options).keys
    broken = {keys[0]: "zero-byte", keys[1]: "not-an-image", keys[2]: "truncated"}
    for key, how in broken.items():
        _corrupt(root / key, how)

    def module(policy: str, out: str) -> MedicalDataModule:
        return MedicalDataModule(layout, root, options=options, img_size=16, batch_size=1,
                                 val_fraction=0.0, test_fraction=0.0, on_bad_file=policy,
                                 output_dir=tmp_path / out)  # fmt: skip

    with pytest.raises(ValueError) as info:
        module("error", "run1").setup()
    for key in broken:
        assert key in str(info.value)
    skipping = module("skip", "run2")
    skipping.setup()
    served = {
        skipping.index.keys[i] for s in ("train", "val", "test") for i in skipping.split_indices(s)
    }
    assert served == set(keys) - set(broken)
    listed = (tmp_path / "run2" / "skipped.csv").read_text()
    assert all(Path(key).name in listed for key in broken)


MODES = {"RGBA": ".png", "P": ".png", "I;16": ".png", "L": ".jpg", "CMYK": ".jpg", "LA": ".png"}


@pytest.mark.parametrize(
    ("layout", "build", "options"), FILE_LAYOUTS, ids=[c[0] for c in FILE_LAYOUTS]
)
def test_unusual_image_modes_in_each_layout_read_as_rgb(tmp_path, layout, build, options):
    root = build(tmp_path / layout)
    keys = build_index(layout, root, **options).keys
    rgb = np.random.default_rng(1).integers(0, 256, (10, 12, 3), np.uint8)
    converted = 0
    for key, (mode, suffix) in zip(keys, MODES.items()):
        path = root / key
        if path.suffix.lower() not in (suffix, ".jpeg" if suffix == ".jpg" else suffix):
            continue  # keep the layout's file names: only modes its format can store
        if mode == "I;16":
            odd = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        else:
            odd = Image.fromarray(rgb).convert(mode)
        odd.save(path)
        converted += 1
    assert converted >= 2
    dm = MedicalDataModule(layout, root, options=options, img_size=16, batch_size=1,
                           val_fraction=0.0, test_fraction=0.0)  # fmt: skip
    dm.setup()
    for i in range(len(dm.train_dataloader().dataset)):
        x, _ = dm.train_dataloader().dataset[i]
        assert x.shape == (3, 16, 16) and torch.isfinite(x).all()


# --- debug=tiny with every dataset, and the run's seed drawing the labels ----------------------
TINY_DATA = {
    "isic2019": lambda data: isic(data / "ISIC2019"),
    "brain_mri": lambda data: brain(data / "brain_mri", per_class=4),
    "dermofit": lambda data: dermofit(data / "dermofit"),
    "autoimmune": lambda data: autoimmune(data / "autoimmune"),
    "medmnist": lambda data: npz(data / "medmnist", "dermamnist_64.npz").parent,
    "image_folder": lambda data: folder(data / "mine"),
    "csv": lambda data: csv_layout(data / "table"),
}


@pytest.mark.parametrize("name", sorted(TINY_DATA))
def test_debug_tiny_instantiates_every_data_config(tmp_path, name):
    from hydra.utils import instantiate

    root = TINY_DATA[name](tmp_path / "data")
    overrides = ["debug=tiny", f"data={name}", "data.val_fraction=0.2"]
    if name in ("image_folder", "csv"):
        overrides.append(f"data.root={root}")
    if name == "csv":
        overrides.append("data.options.csv_file=labels.csv")
    cfg = compose_app(tmp_path, overrides)
    assert "images_per_class" not in cfg.data or name == "synthetic"
    dm = instantiate(cfg.data, _convert_="all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dermofit's fixture has 3 of the 10 classes
        dm.setup()
    assert dm.batch_size == 8 and dm.img_size == 32 and dm.num_classes >= 2


def test_debug_tiny_pretrains_on_a_real_layout(tmp_path):
    from cass_lightning.apps.pretrain import pretrain

    brain(tmp_path / "data" / "brain_mri", per_class=4)
    cfg = compose_app(tmp_path, ["debug=tiny", "data=brain_mri", "trainer.fast_dev_run=true",
                                 "print_config=false", "rich_progress_bar=false"])  # fmt: skip
    assert pretrain(cfg)["metrics"]["train/loss"] >= 0.0


def test_debug_tiny_still_shrinks_the_synthetic_set(tmp_path):
    cfg = compose_app(tmp_path, ["debug=tiny"])
    assert (cfg.data.images_per_class, cfg.data.val_images_per_class) == (4, 2)
    assert cfg.data.image_size == 32
    assert (
        compose_app(tmp_path, ["debug=tiny", "data.images_per_class=6"]).data.images_per_class == 6
    )
    assert compose_app(tmp_path, []).data.images_per_class == 100


@pytest.mark.parametrize("config_name", ["pretrain", "finetune"])
def test_label_seed_follows_the_run_seed_unless_set(tmp_path, config_name):
    for seed in (0, 1, 2):
        assert (
            compose_app(tmp_path, [f"seed={seed}"], config_name=config_name).data.label_seed == seed
        )
    explicit = compose_app(tmp_path, ["seed=1", "data.label_seed=5"], config_name=config_name)
    assert explicit.data.label_seed == 5


def test_data_app_without_a_seed_draws_labels_with_seed_zero(tmp_path):
    assert compose_app(tmp_path, [], config_name="data_app").data.label_seed == 0


def test_new_data_options_compose_and_override(tmp_path):
    cfg = compose_app(tmp_path, ["data=isic2019", "data.allow_outside_root=true"])
    assert cfg.data.allow_outside_root is True
    for name in ("brain_mri", "dermofit"):
        cfg = compose_app(tmp_path, [f"data={name}"])
        assert cfg.data.options.allow_extra_classes is False
        cfg = compose_app(tmp_path, [f"data={name}", "data.options.allow_extra_classes=true"])
        assert cfg.data.options.allow_extra_classes is True
