"""Precision, lr scaling and launch-mode rules."""

from __future__ import annotations

import math

import pytest
import torch

from cass_lightning.runtime import (
    check_multirun_strategy,
    lr_scale_factor,
    resolve_precision,
    world_size,
)


def test_precision_auto_on_this_machine():
    expected = "32-true"
    if torch.cuda.is_available():
        expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    assert resolve_precision("auto") == expected
    assert resolve_precision("auto", accelerator="cpu") == "32-true"


def test_precision_auto_picks_by_gpu_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "auto") == "16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed", "16-mixed", 32])
def test_explicit_precision_is_kept(value):
    assert resolve_precision(value) == str(value)


def test_lr_scaling_rules():
    assert lr_scale_factor("none", 64, 16) == 1.0
    assert lr_scale_factor("linear", 64, 16) == 4.0
    assert lr_scale_factor("sqrt", 64, 16) == 2.0
    assert lr_scale_factor("sqrt", 8, 16) == pytest.approx(math.sqrt(0.5))
    with pytest.raises(ValueError, match=r"lr_scaling\.rule"):
        lr_scale_factor("cubic", 8, 16)
    with pytest.raises(ValueError, match="positive"):
        lr_scale_factor("linear", 0, 16)


def test_world_size_from_config_values():
    assert world_size(2) == 2 and world_size(4, num_nodes=2) == 8
    assert world_size([0, 1]) == 2 and world_size("3") == 3
    assert world_size("auto") is None


def test_multirun_with_relaunching_ddp_is_refused():
    with pytest.raises(ValueError, match="ddp_spawn"):
        check_multirun_strategy(True, "ddp", 2)
    check_multirun_strategy(True, "ddp_spawn", 2)  # in-process spawn: fine
    check_multirun_strategy(False, "ddp", 2)  # single run: Lightning handles Hydra
    check_multirun_strategy(True, "ddp", 1)  # one device: nothing is re-launched
