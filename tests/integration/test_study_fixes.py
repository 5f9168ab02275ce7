"""What the study's table needs of the baselines and of fine-tuning, end to end.

- a DINO export of either arm fine-tunes through ``finetune(cfg)`` (the CNN arm once stopped with
  ``KeyError: 'vit'``), and asking for the arm an export lacks is refused by name;
- DINO pretraining records the lr its rule gives (5e-4 x batch / 256);
- ``cass-export`` exports CASS and DINO checkpoints whose ImageNet weights files are gone;
- ``results.json`` holds the test pass's classes, per-class F1 and support, confusion matrix
  and the labelled subset's seed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from app_helpers import compose_app
from cass_lightning import CASSModule, DINOModule
from cass_lightning.apps.export import export_checkpoint
from cass_lightning.apps.finetune import RESULTS_FILE, finetune
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.export import load_backbone, read_meta
from cass_lightning.modules.classifier import ClassifierModule
from run_helpers import make_trainer

SMALL_HEAD = dict(dim=32, hidden_dim=64, bottleneck_dim=16)
TINY_FINETUNE = [
    "data.images_per_class=4", "data.val_images_per_class=2", "data.image_size=32",
    "data.batch_size=8", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def _logged(run: Path, column: str) -> list[float]:
    with (run / "csv" / "metrics.csv").open() as fh:
        return [float(row[column]) for row in csv.DictReader(fh) if row.get(column)]


# ----------------------------------------------------- DINO export -> fine-tuning, per arm
@pytest.mark.parametrize("arm", ["cnn", "vit"])
def test_dino_export_of_either_arm_fine_tunes_end_to_end(tmp_path, arm):
    overrides = ["model=dino", "debug=tiny", f"model.arm={arm}", "model.scheduler.name=none",
                 "print_config=false", "rich_progress_bar=false",
                 *(f"model.head.{k}={v}" for k, v in SMALL_HEAD.items())]  # fmt: skip
    pretrained = pretrain(compose_app(tmp_path, overrides, output_dir=tmp_path / "pre"))
    # DINO's lr rule, recorded per step: 5e-4 per 256 images at the tiny batch of 8.
    lrs = _logged(tmp_path / "pre", f"lr/{arm}")
    assert lrs and lrs == pytest.approx([5e-4 * 8 / 256] * len(lrs))
    export = Path(pretrained["export_dir"])
    assert read_meta(export)["method"] == "dino" and arm in read_meta(export)

    cfg = compose_app(tmp_path, [*TINY_FINETUNE, f"arm={arm}", f"weights={export}"],
                      config_name="finetune", output_dir=tmp_path / "ft")  # fmt: skip
    result = finetune(cfg)
    saved = json.loads((tmp_path / "ft" / RESULTS_FILE).read_text())
    assert (saved["arm"], saved["init"], saved["method"]) == (arm, "export", "dino")
    assert saved["img_size"] == 32 and saved["timm_name"] == cfg_name(arm)
    assert math.isfinite(saved["metrics"]["test/f1_macro"]) and result["arm"] == arm
    # Fine-tuning starts from the exported student: every backbone tensor but the new head.
    start = ClassifierModule(arm=arm, init="export", weights=str(export), num_classes=6)
    exported = load_backbone(export, arm).state_dict()
    head = {f"{name}." for name, m in start.backbone.named_modules() if m is start.head}
    kept = {k: v for k, v in start.backbone.state_dict().items() if not k.startswith(tuple(head))}
    assert kept and all(torch.equal(v, exported[k]) for k, v in kept.items())

    other = "vit" if arm == "cnn" else "cnn"
    cfg = compose_app(tmp_path, [*TINY_FINETUNE, f"arm={other}", f"weights={export}"],
                      config_name="finetune", output_dir=tmp_path / "ft-other")  # fmt: skip
    with pytest.raises(ValueError, match=rf"holds no {other} arm \(it holds: {arm}; written by "
                       rf"dino\); choose arm={arm}"):  # fmt: skip
        finetune(cfg)
    assert not (tmp_path / "ft-other" / RESULTS_FILE).exists()


def cfg_name(arm: str) -> str:
    return {"cnn": "resnet10t", "vit": "vit_tiny_patch16_224"}[arm]


# ------------------------------------------ cass-export without the ImageNet weights files
def _checkpoint_claiming_gone_weights(model, tmp_path: Path, name: str) -> Path:
    """A checkpoint of ``model`` whose hyperparameters say it started from ImageNet weights
    files that no longer exist (as a finished run's do once the files are moved)."""
    trainer = make_trainer(max_steps=0, default_root_dir=tmp_path)
    trainer.strategy.connect(model)
    path = tmp_path / "run" / "checkpoints" / f"{name}.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)
    hp = state["hyper_parameters"]
    hp["pretrained"] = True
    hp["cnn_weights_file"] = str(tmp_path / "gone" / "resnet.safetensors")
    hp["vit_weights_file"] = str(tmp_path / "gone" / "vit.safetensors")
    torch.save(state, path)
    return path


def test_cass_checkpoint_exports_without_its_imagenet_weights_files(tmp_path, tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    path = _checkpoint_claiming_gone_weights(model, tmp_path, "cass")
    out = export_checkpoint(path, tmp_path / "export")
    for arm in ("cnn", "vit"):
        exported = load_backbone(out, arm).state_dict()
        expected = getattr(model, arm).state_dict()
        assert exported.keys() == expected.keys()
        assert all(torch.equal(exported[k], v) for k, v in expected.items())


def test_dino_checkpoint_exports_without_its_imagenet_weights_file(tmp_path):
    model = DINOModule(arm="cnn", cnn="resnet10t", img_size=32, head=SMALL_HEAD)
    path = _checkpoint_claiming_gone_weights(model, tmp_path, "dino")
    out = export_checkpoint(path, tmp_path / "export")
    assert read_meta(out)["method"] == "dino"
    exported = load_backbone(out, "cnn").state_dict()
    expected = model.student_backbone.state_dict()
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], v) for k, v in expected.items())


# --------------------------------------------------- results.json: per-class results
def test_results_hold_classes_per_class_scores_confusion_and_label_seed(tmp_path):
    cfg = compose_app(tmp_path, [*TINY_FINETUNE, "weights=random", "model.timm_name=resnet10t",
                                 "model.img_size=32", "data.label_seed=5"],
                      config_name="finetune", output_dir=tmp_path / "ft")  # fmt: skip
    result = finetune(cfg)
    saved = json.loads((tmp_path / "ft" / RESULTS_FILE).read_text())
    assert saved["label_seed"] == 5 and result["label_seed"] == 5
    classes, n = saved["classes"], saved["num_classes"]
    assert len(classes) == n == 6 and classes == sorted(classes)  # the synthetic set's names
    confusion = saved["confusion"]
    assert len(confusion) == n and all(len(row) == n for row in confusion)
    # The validation split is evaluated here (no test split): 2 images of each class.
    assert saved["test_split"] == "val" and [sum(row) for row in confusion] == [2] * n
    per_class = saved["per_class"]
    assert per_class["support"] == [2] * n
    for c, f1 in enumerate(per_class["f1"]):  # every class has support: never null here
        tp = confusion[c][c]
        fp, fn = sum(row[c] for row in confusion) - tp, 2 - tp
        assert f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # The same predictions as the averaged metrics: their macro F1 is the per-class mean.
    assert saved["metrics"]["test/f1_macro"] == pytest.approx(sum(per_class["f1"]) / n)
    accuracy = sum(confusion[c][c] for c in range(n)) / (2 * n)
    assert saved["metrics"]["test/acc"] == pytest.approx(accuracy)
