"""Through the apps: pretraining, fine-tuning and both kinds of cass-export record where their
figures came from, and every export they write loads with plain timm alone."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra

from app_helpers import compose_app
from cass_lightning.apps.export import main as export_main
from cass_lightning.apps.finetune import finetune
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.export import load_backbone, load_classifier
from cass_lightning.machine import machine_record

MACHINE_KEYS = {"precision", "accelerator", "device", "device_count", "processes", "cpu",
                "cpu_bf16_native", "gpus", "versions"}  # fmt: skip


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_runs_record_their_machine_and_their_exports_load_with_plain_timm(tmp_path, capsys):
    cfg = compose_app(tmp_path, ["debug=tiny", "data=synthetic", "print_config=false",
                                 "rich_progress_bar=false", "logger=csv",
                                 "model.head_dim=16"])  # fmt: skip
    result = pretrain(cfg)
    run = tmp_path / "run"
    here = machine_record("32-true", "cpu", 1, 1)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["machine"]) >= MACHINE_KEYS and summary["precision"] == "32-true"
    assert summary["machine"]["device"] == here["device"]
    assert summary["machine"]["versions"] == here["versions"]
    start = json.loads((run / "run_info.json").read_text())["starts"][0]
    assert start["machine"]["device"] == here["device"] and start["machine"]["processes"] == 1
    (hparams,) = run.rglob("hparams.yaml")  # the loggers' hyperparameters
    assert yaml.safe_load(hparams.read_text())["machine"]["precision"] == "32-true"
    meta = json.loads((run / "export" / "meta.json").read_text())
    assert meta["training"]["data"]["fingerprint"]["files"] > 0
    assert meta["training"]["device"] == here["device"]

    ft = compose_app(tmp_path, [
        "data=synthetic", "data.images_per_class=3", "data.val_images_per_class=1",
        "data.image_size=32", "data.batch_size=6", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", f"weights={result['export_dir']}", "arm=cnn",
        "logger=csv", "seed=5",
    ], config_name="finetune", output_dir=tmp_path / "ft")  # fmt: skip
    tuned = finetune(ft)
    saved = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert set(saved["machine"]) >= MACHINE_KEYS and saved["precision"] == "32-true"
    assert saved["machine"]["device"] == here["device"]

    # cass-export of the last checkpoint (same weights as the export the fine-tuning used):
    # its CNN card shows that run's result, with its seed
    export_main([result["last_checkpoint"], "--out", str(tmp_path / "again"),
                 "--results", str(tmp_path / "ft")])  # fmt: skip
    assert "timm-cnn, timm-vit" in capsys.readouterr().out
    card = (tmp_path / "again" / "timm-cnn" / "README.md").read_text()
    assert "| 1 | test/f1_macro | 5: " in card and "**Dataset:** synthetic" in card
    assert here["device"] in card and "**epochs planned:** 1" in card
    assert "**epochs trained:** 1" in card  # read from the checkpoint, not the planned run
    # a fine-tuned classifier
    export_main([tuned["best_checkpoint"], "--out", str(tmp_path / "clf")])
    x = torch.randn(2, 3, 32, 32)
    ours, meta, _ = load_classifier(tmp_path / "clf")
    theirs = timm.create_model(f"local-dir:{tmp_path / 'clf' / 'timm-cnn'}", pretrained=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), ours(x))
        for arm in ("cnn", "vit"):
            folder = tmp_path / "again" / f"timm-{arm}"
            plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            mine = load_backbone(tmp_path / "again", arm).eval()
            torch.testing.assert_close(plain.forward_features(x), mine.forward_features(x))
    assert theirs.pretrained_cfg["label_names"] == meta["classes"]
    assert "seed" in (tmp_path / "clf" / "timm-cnn" / "README.md").read_text()
