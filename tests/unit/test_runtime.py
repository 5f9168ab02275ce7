"""Precision, lr scaling and launch-mode rules."""

from __future__ import annotations

import math

import pytest
import torch

from cass_lightning.runtime import (
    check_multirun_strategy,
    check_run_length,
    cpu_bf16_warning,
    lr_scale_factor,
    read_cpu_flags,
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


# --- bf16 on CPUs without native bf16 (emulated: many times slower than fp32)
EPYC_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_flags_are_read_from_cpuinfo_text():
    assert read_cpu_flags(EPYC_AVX2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert "amx_bf16" in read_cpu_flags(SAPPHIRE)
    assert "bf16" in read_cpu_flags(GRAVITON3)
    assert read_cpu_flags("no flags here") is None


@pytest.mark.parametrize(
    ("cpuinfo", "slow"), [(EPYC_AVX2, True), (SAPPHIRE, False), (GRAVITON3, False)]
)
def test_bf16_warning_follows_the_cpu_flags(cpuinfo, slow):
    flags = read_cpu_flags(cpuinfo)
    warning = cpu_bf16_warning("bf16-mixed", True, "AVX2", flags)
    assert (warning is not None) == slow
    if slow:
        assert "trainer.precision=bf16-mixed" in warning and "AVX2" in warning
        assert "32-true" in warning
    for quiet in (("32-true", True), ("16-mixed", True), ("bf16-mixed", False)):
        assert cpu_bf16_warning(*quiet, "AVX2", flags) is None  # not bf16, or not on CPU
    assert cpu_bf16_warning("bf16-true", True, "AVX2", None) is None  # cannot tell: quiet


@pytest.mark.parametrize(
    ("epochs", "steps", "message"),
    [
        (0, -1, r"trainer\.max_epochs must be >= 1"),
        (-2, -1, r"trainer\.max_epochs must be >= 1"),
        (1, 0, r"trainer\.max_steps must be an integer >= 1, or -1"),
        (1, -5, r"trainer\.max_steps"),
        (1.5, -1, r"trainer\.max_epochs must be an integer"),
    ],
)
def test_a_run_that_would_train_nothing_is_refused(epochs, steps, message):
    with pytest.raises(ValueError, match=message):
        check_run_length(epochs, steps)


def test_run_lengths_that_train():
    for epochs, steps in ((1, -1), (100, None), (-1, 50), (None, 10), (None, None), (-1, -1)):
        check_run_length(epochs, steps)
