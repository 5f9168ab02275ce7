"""Parameter groups and learning-rate schedules."""

from __future__ import annotations

import itertools
import math

import pytest
import timm
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from cass_lightning.modules.optim import (
    arm_param_groups,
    build_optimizer,
    build_scheduler,
    warmup_cosine_factor,
)


def test_norms_biases_and_vit_embeddings_get_no_decay():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=4)
    groups = {g["name"]: g for g in arm_param_groups("vit", [vit], lr=1e-3, weight_decay=0.05)}
    assert set(groups) == {"vit", "vit_no_decay"}
    no_decay = {id(p) for p in groups["vit_no_decay"]["params"]}
    named = dict(vit.named_parameters())
    assert id(named["pos_embed"]) in no_decay and id(named["cls_token"]) in no_decay
    assert id(named["blocks.0.norm1.weight"]) in no_decay
    assert id(named["head.bias"]) in no_decay
    assert id(named["blocks.0.attn.qkv.weight"]) not in no_decay
    assert groups["vit"]["weight_decay"] == 0.05 and groups["vit_no_decay"]["weight_decay"] == 0.0
    total = sum(p.numel() for g in groups.values() for p in g["params"])
    assert total == sum(p.numel() for p in vit.parameters())


def test_frozen_parameters_are_left_out():
    layer = torch.nn.Linear(3, 2)
    layer.weight.requires_grad_(False)
    groups = arm_param_groups("cnn", [layer], lr=0.1, weight_decay=0.0)
    assert [g["name"] for g in groups] == ["cnn_no_decay"]


def test_unknown_optimizer_and_scheduler():
    groups = arm_param_groups("cnn", [torch.nn.Linear(2, 2)], lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"optimizer\.name"):
        build_optimizer(groups, name="lamb")
    opt = build_optimizer(groups, name="adam")
    with pytest.raises(ValueError, match=r"scheduler\.name"):
        build_scheduler(opt, 10, name="step")


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cyclic_cosine_is_the_papers_per_step_schedule():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer([dict(name="cnn", params=params, lr=1e-3, weight_decay=0.0)])
    sched = build_scheduler(opt, 0, name="cyclic_cosine", t_max=16, eta_min=1e-6)
    lrs = _lrs(sched, opt, 70)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[16] == pytest.approx(1e-6, abs=1e-9)  # bottom after T_max steps
    assert lrs[32] == pytest.approx(1e-3, rel=1e-6)  # back to the top: a 32-step cycle
    assert lrs[48] == pytest.approx(1e-6, abs=1e-9)
    closed = [1e-6 + (1e-3 - 1e-6) * (1 + math.cos(math.pi * t / 16)) / 2 for t in range(70)]
    assert lrs == pytest.approx(closed, rel=1e-5, abs=1e-10)
    # Identical to torch's scheduler on its own optimiser (the notebook's construction).
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    assert lrs == pytest.approx(_lrs(CosineAnnealingLR(opt2, T_max=16, eta_min=1e-6), opt2, 70))


def test_warmup_cosine_shape():
    factors = [
        warmup_cosine_factor(s, warmup_steps=10, total_steps=100, min_ratio=0.01)
        for s in range(100)
    ]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(factors[:10]))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert warmup_cosine_factor(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_warmup_cosine_scales_each_group_base_lr():
    groups = [
        dict(name="cnn", params=[torch.nn.Parameter(torch.zeros(1))], lr=1e-3, weight_decay=0.0),
        dict(name="vit", params=[torch.nn.Parameter(torch.zeros(1))], lr=1e-4, weight_decay=0.0),
    ]
    opt = build_optimizer(groups)
    sched = build_scheduler(opt, 20, name="warmup_cosine", warmup_steps=4, min_lr_ratio=0.0)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * warmup_cosine_factor(4, 4, 20, 0.0))
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-4 * warmup_cosine_factor(4, 4, 20, 0.0))
