"""Checkpoints written before the constructors were regrouped still load, settings included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cass_lightning import CASSModule, DINOModule
from cass_lightning.modules.ablation import AccumulatingCASSModule
from cass_lightning.modules.legacy import stored_hparams, upgrade_cass_hparams

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / "legacy_outputs.pt", weights_only=True)


def test_old_cass_checkpoint_loads_with_every_setting(outputs):
    model = CASSModule.load_from_checkpoint(FIXTURES / "legacy_cass.ckpt", weights_only=True)
    r = model.remedies
    assert (r.layer_decay, r.variance_weight, r.predictor, r.predictor_hidden_dim) == (
        0.75, 1.0, "alternate", 8,
    )  # fmt: skip
    assert (r.ema_momentum, r.vit_freeze_stages, r.two_views) == (0.99, 1, False)
    assert model.optimizer_cfg["cnn_lr"] == 5e-4 and model.optimizer_cfg["vit_weight_decay"] == 0.01
    assert model.hparams.batch_lr_factor == 0.5
    lrs = model.arm_hyperparameters()
    assert lrs["cnn"]["lr"] == pytest.approx(2.5e-4) and lrs["vit"]["lr"] == pytest.approx(5e-4)
    assert model.ema is not None and model.objective.predictors is not None
    model.eval()
    with torch.no_grad():
        z_cnn, z_vit = model(outputs["input"])
    torch.testing.assert_close(z_cnn, outputs["cass_cnn"])
    torch.testing.assert_close(z_vit, outputs["cass_vit"])
    # What is saved now is the new form: it loads again without any upgrade.
    assert "remedies" in model.hparams and "layer_decay" not in model.hparams


def test_old_dino_checkpoint_loads_with_every_setting(outputs):
    model = DINOModule.load_from_checkpoint(FIXTURES / "legacy_dino.ckpt", weights_only=True)
    assert model.head_cfg["dim"] == 16 and model.head_cfg["batch_norm"] is True
    assert model.head_cfg["hidden_dim"] == 16 and model.head_cfg["bottleneck_dim"] == 8
    assert list(model.hparams.cnn_kwargs["channels"]) == [8, 8, 8, 8]  # backbone_kwargs -> cnn
    assert model.hparams.batch_lr_factor == 0.5
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.student_backbone(outputs["input"]), outputs["dino_backbone"]
        )


def test_the_notebook_ablation_is_refused_by_the_plain_module_only():
    hp = stored_hparams(FIXTURES / "legacy_cass.ckpt")
    hp["zero_grad_every_step"] = False
    with pytest.raises(ValueError, match="AccumulatingCASSModule"):
        upgrade_cass_hparams(hp, accumulates_gradients=False)
    assert upgrade_cass_hparams(hp, accumulates_gradients=True)["remedies"]["layer_decay"] == 0.75
    assert AccumulatingCASSModule.accumulates_gradients is True


def test_current_hparams_are_left_alone():
    assert upgrade_cass_hparams({"cnn": "x", "vit": "y", "remedies": {}}, False) == {}
