"""The speed settings: each auto rule, what is refused, and what the switches do on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cass_lightning import CASSModule
from cass_lightning.modules.optim import build_optimizer, fusable
from cass_lightning.runtime import (
    SPEED_KEYS,
    apply_speed_globals,
    apply_speed_switches,
    compile_arms,
    resolve_speed,
    set_fused_optimizer,
    speed_request,
)

AUTO = {key: "auto" for key in SPEED_KEYS}


def test_auto_on_cuda_turns_on_every_safe_switch_and_leaves_compile_off():
    got = resolve_speed(AUTO, on_cuda=True, num_workers=4, precision="bf16-mixed")
    assert got == {
        "tf32": True, "fused_optimizer": True, "channels_last": True, "cudnn_benchmark": True,
        "compile_cnn": False, "compile_vit": False, "pin_memory": True,
        "persistent_workers": True,
    }  # fmt: skip


def test_auto_on_cpu_turns_everything_off_but_persistent_workers():
    got = resolve_speed(AUTO, on_cuda=False, num_workers=2)
    assert [k for k, v in got.items() if v] == ["persistent_workers"]
    assert not resolve_speed(AUTO, on_cuda=False, num_workers=0)["persistent_workers"]


def test_cuda_only_switches_asked_on_a_cpu_run_are_recorded_off():
    asked = {key: True for key in SPEED_KEYS}
    got = resolve_speed(asked, on_cuda=False, num_workers=0)
    assert not any(got[k] for k in ("tf32", "fused_optimizer", "cudnn_benchmark", "pin_memory"))
    assert got["channels_last"] and got["compile_cnn"] and got["compile_vit"]
    assert not got["persistent_workers"]  # no workers to keep


def test_explicit_values_win_over_auto_and_fp64_has_no_tf32():
    got = resolve_speed({**AUTO, "tf32": False, "compile_vit": True}, on_cuda=True, num_workers=0)
    assert got["tf32"] is False and got["compile_vit"] is True and got["compile_cnn"] is False
    assert not resolve_speed(AUTO, on_cuda=True, num_workers=0, precision="64-true")["tf32"]


def test_bad_speed_values_and_keys_are_refused_by_name():
    with pytest.raises(ValueError, match=r"speed\.tf32 must be true, false or auto; got .yes."):
        resolve_speed({"tf32": "yes"}, on_cuda=True, num_workers=0)
    with pytest.raises(ValueError, match=r"unknown speed setting\(s\) \['turbo'\]"):
        resolve_speed({"turbo": True}, on_cuda=True, num_workers=0)
    with pytest.raises(ValueError, match=r"speed\.compile has unknown arm"):
        compile_arms({"mlp": True})


def test_speed_request_reads_compile_per_arm_and_the_loader_options():
    asked = speed_request(
        {"tf32": "auto", "compile": {"cnn": True, "vit": False}},
        {"pin_memory": None, "persistent_workers": False},
    )
    assert asked["compile_cnn"] is True and asked["compile_vit"] is False
    assert "pin_memory" not in asked and asked["persistent_workers"] is False
    assert speed_request({"compile": True})["compile_vit"] is True  # the one-switch form
    assert compile_arms(["vit"]) == {"cnn": False, "vit": True}


def test_channels_last_goes_to_the_cnn_arm_only(tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    done = apply_speed_switches(model, channels_last=True, compile={"cnn": False, "vit": False})
    assert done == ["channels_last:cnn"]
    assert model.cnn.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.vit.patch_embed.proj.weight.is_contiguous()  # the ViT is left as it was
    assert not model.vit.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_per_arm_compiles_only_that_arm(tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    assert apply_speed_switches(model, False, {"cnn": False, "vit": True}) == ["compile:vit"]
    assert model.vit._compiled_call_impl is not None
    assert model.cnn._compiled_call_impl is None


def test_fused_optimizer_is_used_only_where_every_parameter_is_on_cuda():
    groups = [{"params": list(nn.Linear(3, 2).parameters())}]
    assert not fusable(groups)
    opt = build_optimizer(groups, "adam", fused=True)  # CPU: the default implementation
    assert not opt.defaults.get("fused")
    module = type("M", (), {"optimizer_cfg": {"lr": 1e-3}})()
    set_fused_optimizer(module, True)
    assert module.optimizer_cfg == {"lr": 1e-3, "fused": True}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused Adam needs CUDA")
def test_fused_optimizer_on_cuda():
    groups = [{"params": list(nn.Linear(3, 2).cuda().parameters())}]
    assert build_optimizer(groups, "adamw", fused=True).defaults["fused"]


def test_speed_globals_leave_a_cpu_run_alone(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.get_float32_matmul_precision()
    apply_speed_globals({"tf32": True, "cudnn_benchmark": True}, on_cuda=False)
    assert torch.get_float32_matmul_precision() == before
    assert torch.backends.cudnn.benchmark is False


def test_speed_globals_set_tf32_both_ways_on_cuda(monkeypatch):
    """Mocked: the flags are plain attributes, so this holds without a GPU too."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.get_float32_matmul_precision()
    try:
        apply_speed_globals({"tf32": False, "cudnn_benchmark": True}, on_cuda=True)
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is False  # exact fp32, though cuDNN allows it
        assert torch.backends.cudnn.benchmark is True
        apply_speed_globals({"tf32": True, "cudnn_benchmark": False}, on_cuda=True)
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cuda.matmul.allow_tf32 = before != "highest"
