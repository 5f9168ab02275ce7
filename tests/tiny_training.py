"""The training modules on tiny encoders with in-memory loaders of ``steps`` batches: CASS (one
view), DINO (multi-crop), the two-view one-arm methods (BYOL, SimSiam, SimCLR) and fine-tuning,
for tests that train each a few steps."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from cass_lightning import CASSModule
from cass_lightning.data.views import default_local_size
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.modules.dino import DINOModule

TINY_DINO = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32,
                 head=dict(dim=32, hidden_dim=64, bottleneck_dim=16))  # fmt: skip

Setup = tuple[L.LightningModule, DataLoader]


def tiny_cass(steps: int) -> Setup:
    model = CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=32)
    return model, DataLoader(torch.randn(2 * steps, 3, 32, 32), batch_size=2)


def tiny_dino(steps: int) -> Setup:
    small = default_local_size(32)
    views = [
        [[torch.randn(2, 3, 32, 32) for _ in range(2)]
         + [torch.randn(2, 3, small, small) for _ in range(2)], torch.zeros(2)]
        for _ in range(steps)
    ]  # fmt: skip
    return DINOModule(arm="cnn", **TINY_DINO), DataLoader(views, batch_size=None)


def tiny_two_view(method: str, steps: int) -> Setup:
    """BYOL, SimSiam or SimCLR on the CNN arm, small heads, two views per image."""
    from cass_lightning.modules.registry import get_method

    head = {"byol": dict(hidden_dim=16, dim=8, predictor_hidden_dim=16),
            "simsiam": dict(hidden_dim=16, dim=8, predictor_hidden_dim=4),
            "simclr": dict(hidden_dim=16, dim=8)}[method]  # fmt: skip
    model = get_method(method).module_class()(arm="cnn", cnn="resnet10t", img_size=32, head=head)
    pairs = [[[torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)], torch.zeros(2)]
             for _ in range(steps)]  # fmt: skip
    return model, DataLoader(pairs, batch_size=None)


def tiny_classifier(steps: int) -> Setup:
    data = TensorDataset(torch.randn(2 * steps, 3, 32, 32), torch.arange(2 * steps) % 3)
    model = ClassifierModule(init="random", timm_name="resnet10t", num_classes=3)
    return model, DataLoader(data, batch_size=2)


TINY_SETUPS: dict[str, Callable[[int], Setup]] = {
    "cass": tiny_cass, "dino": tiny_dino, "classifier": tiny_classifier,
    **{m: partial(tiny_two_view, m) for m in ("byol", "simsiam", "simclr")},
}  # fmt: skip
