"""The collapse alarm on every method: each trained arm's spread of l2-normalised outputs is
logged (``train/<arm>_std``), and the monitor warns by method and arm when an encoder is made to
map every image to one point, and stays quiet on the same run left alone."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from cass_lightning.callbacks import CollapseMonitor
from cass_lightning.data.views import default_local_size
from cass_lightning.modules.registry import get_method

TINY = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32)
#: Small heads so the run spends its time on the encoders.
SMALL: dict[str, dict[str, Any]] = {
    "cass": {"head_dim": 32},
    "dino": {"arm": "cnn", "head": {"dim": 32, "hidden_dim": 32, "bottleneck_dim": 16}},
    "byol": {"arm": "cnn", "head": {"hidden_dim": 32, "dim": 16, "predictor_hidden_dim": 32}},
    "simsiam": {"arm": "vit", "head": {"hidden_dim": 32, "dim": 16, "predictor_hidden_dim": 8}},
    "simclr": {"arm": "cnn", "head": {"hidden_dim": 32, "dim": 16}},
}


def _batches(views: str, steps: int = 2, size: int = 8) -> DataLoader:
    """``steps`` random batches in the form the method declared (``data_views()``)."""

    def image(side: int = 32) -> Tensor:
        return torch.randn(size, 3, side, side)

    labels = torch.zeros(size, dtype=torch.long)
    if views == "paper":
        batches: list[Any] = [image() for _ in range(steps)]
    elif views == "pair":
        batches = [[[image(), image()], labels] for _ in range(steps)]
    else:  # dino: two global and two local crops
        small = default_local_size(32)
        batches = [[[image(), image(), image(small), image(small)], labels] for _ in range(steps)]
    return DataLoader(batches, batch_size=None)


def _collapse(module: torch.nn.Module) -> None:
    """Make ``module`` map every image to the same output (all ones), still differentiable."""
    module.register_forward_hook(lambda m, inputs, out: torch.ones_like(out) + 0 * out)


def _fit(name: str, collapsed: bool) -> tuple[L.LightningModule, CollapseMonitor, L.Trainer]:
    torch.manual_seed(0)
    model = get_method(name).module_class()(**TINY, **SMALL[name])
    if collapsed:
        for arm in model.trained_arms():
            _collapse(model.arm_backbone(arm))
    monitor = CollapseMonitor()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[monitor])  # fmt: skip
    trainer.fit(model, _batches(model.data_views()))
    return model, monitor, trainer


@pytest.mark.parametrize("name", ["cass", "dino", "byol", "simsiam", "simclr"])
def test_a_forced_collapse_is_logged_and_named_and_a_healthy_run_is_not(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, monitor, trainer = _fit(name, collapsed=False)
    assert monitor.collapsed_at is None
    assert not [w for w in caught if "collapse at epoch" in str(w.message)]
    arms = model.trained_arms()
    healthy = {arm: float(trainer.callback_metrics[f"train/{arm}_std_epoch"]) for arm in arms}
    assert all(v > 0.01 for v in healthy.values()), healthy

    label = model.method_name
    with pytest.warns(UserWarning, match=rf"{label} collapse at epoch 0: ") as found:
        model, monitor, trainer = _fit(name, collapsed=True)
    assert monitor.collapsed_at == 0
    (message,) = [str(w.message) for w in found if "collapse at epoch" in str(w.message)]
    assert f"collapsed: {' and '.join(arms)}" in message
    for arm in arms:  # the reading itself: no spread left
        assert float(trainer.callback_metrics[f"train/{arm}_std_epoch"]) < 1e-3
    assert "collapse/epoch" in trainer.callback_metrics
