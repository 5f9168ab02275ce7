"""Shared test settings: nothing goes online, tiny models, deterministic seeds."""

from __future__ import annotations

import os

import pytest
import torch

# Never reach a network service from the tests.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CASS_OUTPUT_ROOT", os.path.join(os.getcwd(), ".pytest_runs"))

#: The tiniest real timm arms: a ~5M-parameter ResNet and ViT-Tiny at 32 px (2x2 patches).
TINY = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=32)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA; on CPU-only machines they are reported as skipped."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker: gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_kwargs() -> dict:
    return dict(TINY, pretrained=False)
