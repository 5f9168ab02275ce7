"""Every export is also a folder plain timm loads (``local-dir:``) with no other argument, giving
the same features or logits as our own loader, with a model card a person reads."""

from __future__ import annotations

import hashlib
import json

import pytest
import timm
import torch

from cass_lightning import CASSModule
from cass_lightning.export import export_classifier, export_module, load_backbone, load_classifier
from cass_lightning.modules.byol import BYOLModule
from cass_lightning.modules.dino import DINOModule
from cass_lightning.modules.registry import pretraining_methods
from cass_lightning.modules.simclr import SimCLRModule
from cass_lightning.modules.simsiam import SimSiamModule
from cass_lightning.runtime import apply_speed_switches
from cass_lightning.timm_folder import TIMM_FILES, read_timm_config

TINY = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32)
BYOL_HEAD = {"hidden_dim": 32, "dim": 16, "predictor_hidden_dim": 32}
DINO_HEAD = dict(dim=32, hidden_dim=64, bottleneck_dim=16)
SIMSIAM_HEAD = {"hidden_dim": 32, "dim": 16, "predictor_hidden_dim": 8}
SIMCLR_HEAD = {"hidden_dim": 32, "dim": 16, "temperature": 0.2}


def channels_last_cass() -> CASSModule:
    """A CNN in channels_last memory (a speed setting): strided weights, same values."""
    model = CASSModule(**TINY, head_dim=32)
    assert apply_speed_switches(model, channels_last=True, compile=False) == ["channels_last:cnn"]
    return model


MODELS = {
    "cass": lambda: CASSModule(**TINY, head_dim=32),
    "cass-channels-last": channels_last_cass,
    "cass-projector": lambda: CASSModule(**TINY, head="projector", head_dim=16),
    "dino-cnn": lambda: DINOModule(arm="cnn", **TINY, head=DINO_HEAD),
    "dino-vit": lambda: DINOModule(arm="vit", **TINY, head=DINO_HEAD),
    "byol-cnn": lambda: BYOLModule(arm="cnn", **TINY, head=BYOL_HEAD),
    "byol-vit": lambda: BYOLModule(arm="vit", **TINY, head=BYOL_HEAD),
    "simsiam-cnn": lambda: SimSiamModule(arm="cnn", **TINY, head=SIMSIAM_HEAD),
    "simsiam-vit": lambda: SimSiamModule(arm="vit", **TINY, head=SIMSIAM_HEAD),
    "simclr-cnn": lambda: SimCLRModule(arm="cnn", **TINY, head=SIMCLR_HEAD),
    "simclr-vit": lambda: SimCLRModule(arm="vit", **TINY, head=SIMCLR_HEAD),
}


def plain_timm(folder):
    """What a colleague without this package does: the folder and nothing else."""
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def test_every_registered_method_has_its_arms_checked_here():
    covered = {name.split("-")[0] for name in MODELS}
    missing = sorted({m.name for m in pretraining_methods()} - covered)
    assert not missing, f"add a tiny {missing} model (each arm) to MODELS in this file"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_exported_arm_loads_with_plain_timm_as_with_ours(name, tmp_path):
    model = MODELS[name]().eval()
    out = export_module(model, tmp_path / "export")
    meta = json.loads((out / "meta.json").read_text())
    arms = [a for a in ("cnn", "vit") if a in meta]
    assert arms == (["cnn", "vit"] if name.startswith("cass") else [name.split("-")[1]])
    x = torch.randn(2, 3, 32, 32)
    for arm in arms:
        folder = out / meta[arm]["timm_folder"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(TIMM_FILES)
        ours, theirs = load_backbone(out, arm).eval(), plain_timm(folder)
        with torch.no_grad():
            torch.testing.assert_close(theirs.forward_features(x), ours.forward_features(x))
            torch.testing.assert_close(theirs(x), ours(x))
        assert theirs.pretrained_cfg["input_size"] == (3, 32, 32)
        config = read_timm_config(folder)
        assert config["architecture"] == meta[arm]["timm_name"]
        assert config["num_classes"] == meta[arm]["num_classes"]
        cfg = config["pretrained_cfg"]
        assert (cfg["mean"], cfg["std"]) == (meta["mean"], meta["std"])
        assert (cfg["crop_pct"], cfg["crop_mode"], cfg["interpolation"]) == (1.0, "squash",
                                                                            "bilinear")  # fmt: skip
        # timm's ImageNet tag, licence and origin describe other weights: not carried over
        assert not {"tag", "license", "origin_url", "hf_hub_id"} & set(cfg)
        card = (folder / "README.md").read_text()
        assert f"# {meta[arm]['timm_name']}" in card and "library_name: timm" in card
        if name == "cass-projector":  # the folder holds the backbone: its pooled features
            assert config["num_classes"] == 0 and "-d pooled features" in card
    # the older files keep being written and loading
    assert all((out / f"{arm}.safetensors").is_file() for arm in arms)


def test_a_fine_tuned_classifier_loads_with_plain_timm_and_names_its_labels(tmp_path):
    model = timm.create_model("resnet10t", num_classes=3).eval()
    meta = {"arm": "cnn", "timm_name": "resnet10t", "img_size": 32, "in_chans": 3,
            "mean": [0.5] * 3, "std": [0.25] * 3, "classes": ["glioma", "none", "pituitary"],
            "multi_label": False, "threshold": None, "method": "dino", "seed": 3,
            "label_fraction": 0.1, "dataset": "brain_mri", "test_split": "test",
            "test_metrics": {"test/f1_macro": 0.75},
            "pretraining": {"init": "export", "file": "/x/cnn.safetensors",
                            "sha256": "ab" * 32}}  # fmt: skip
    context = {"data": {"name": "brain_mri", "fingerprint": {"sha256": "cd" * 32, "files": 120}},
               "settings": {"epochs": 7}, "device": "CPU: test (2 cores)",
               "results": [{"label_fraction": 0.1, "seed": 3, "metrics": meta["test_metrics"],
                            "test_split": "test"}]}  # fmt: skip
    out = export_classifier(model, tmp_path / "export", meta, context=context)
    ours, saved, _ = load_classifier(out)
    folder = out / saved["timm_folder"]
    theirs = plain_timm(folder)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x))
    assert theirs.pretrained_cfg["label_names"] == meta["classes"]
    assert read_timm_config(folder)["pretrained_cfg"]["mean"] == [0.5] * 3
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card
    assert "glioma, none, pituitary" in card and "ab" * 32 in card and "cd" * 32 in card
    assert "| 0.1 | test/f1_macro | 3: 0.7500 | 0.7500 | 1 |" in card
    assert "arxiv.org/abs/2104.14294" in card  # DINO's paper
    assert "CPU: test (2 cores)" in card and "**epochs:** 7" in card
    assert "# license:" in card and "\nlicense:" not in card  # left for the owner to set
    assert f'timm.create_model("local-dir:{saved["timm_folder"]}", pretrained=True)' in card


def test_the_card_lists_only_results_that_started_from_these_weights(tmp_path):
    model = MODELS["cass"]()
    first = export_module(model, tmp_path / "a")
    sha = hashlib.sha256((first / "cnn.safetensors").read_bytes()).hexdigest()
    results = [
        {"weights_loaded": {"sha256": sha}, "label_fraction": 0.01, "seed": 0,
         "metrics": {"test/f1_macro": 0.5}, "test_split": "test"},
        {"weights_loaded": {"sha256": sha}, "label_fraction": 0.01, "seed": 1,
         "metrics": {"test/f1_macro": 0.7}, "test_split": "test"},
        {"weights_loaded": {"sha256": "0" * 64}, "label_fraction": 1.0, "seed": 0,
         "metrics": {"test/f1_macro": 0.9}},
    ]  # fmt: skip
    again = export_module(model, tmp_path / "b", context={"results": results, "repo": "me/cass"})
    assert hashlib.sha256((again / "cnn.safetensors").read_bytes()).hexdigest() == sha
    cnn = (again / "timm-cnn" / "README.md").read_text()
    assert "| 0.01 | test/f1_macro | 0: 0.5000, 1: 0.7000 | 0.6000 | 2 |" in cnn
    assert "0.9000" not in cnn
    assert 'timm.create_model("hf-hub:me/cass-cnn", pretrained=True)' in cnn
    vit = (again / "timm-vit" / "README.md").read_text()  # the ViT file has another digest
    assert "No fine-tuning run's `results.json` evaluated these weights yet." in vit
    assert "results" not in json.loads((again / "meta.json").read_text())["training"]


def test_an_existing_timm_folder_is_refused_and_nothing_half_written_stays(tmp_path):
    (tmp_path / "export" / "timm-vit").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="timm-vit"):
        export_module(MODELS["cass"](), tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["timm-vit"]
