"""Checks that need a CUDA device (marker ``gpu``; skipped on CPU-only machines)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cass_lightning import CASSModule, cass_loss
from cass_lightning.runtime import apply_speed_switches, resolve_precision

pytestmark = pytest.mark.gpu


def _fit(precision: str, channels_last: bool = False) -> L.Trainer:
    model = CASSModule(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64)
    apply_speed_switches(model, channels_last=channels_last, compile=False)
    trainer = L.Trainer(accelerator="gpu", devices=1, precision=precision, max_steps=5,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, DataLoader(torch.randn(80, 3, 64, 64), batch_size=16))
    return trainer


def _supported_precisions() -> list[str]:
    """Every precision this GPU can run: bf16 only where the hardware has it (Ampere and up)."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return ["32-true", "16-mixed"] + (["bf16-mixed"] if bf16 else [])


@pytest.mark.parametrize("precision", _supported_precisions())
def test_training_stays_finite_in_every_precision(precision):
    trainer = _fit(precision)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_channels_last_on_gpu():
    assert torch.isfinite(_fit("16-mixed", channels_last=True).callback_metrics["train/loss"])


def test_loss_is_fp32_and_finite_under_fp16_autocast():
    a = torch.randn(8, 1000, device="cuda", dtype=torch.float16) * 1e-4
    with torch.autocast("cuda", dtype=torch.float16):
        loss = cass_loss(a, a.flip(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_precision_auto_picks_mixed_precision():
    assert resolve_precision("auto") in ("bf16-mixed", "16-mixed")
