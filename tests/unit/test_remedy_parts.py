"""The remedies against collapse, without a Trainer: loss terms, objective, freezing, lr decay."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from lightly.loss.vicreg_loss import covariance_loss, variance_loss

from cass_lightning.encoders import freeze_stages, keep_frozen_in_eval
from cass_lightning.losses import cass_loss, covariance_term, variance_term
from cass_lightning.modules.objective import CASSObjective, build_predictor, view_pairs
from cass_lightning.modules.optim import arm_param_groups, group_learning_rates
from cass_lightning.runtime import strategy_for_idle_parameters

DIM = 16


def scaled(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])


def outputs(batch: int = 8, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.randn(batch, dim, requires_grad=True),
        torch.randn(batch, dim, requires_grad=True),
    )


# ------------------------------------------------------------------ variance / covariance terms
def test_variance_and_covariance_terms_are_lightlys_on_the_scaled_sphere():
    z = torch.randn(32, DIM) * 3 + 1
    torch.testing.assert_close(variance_term(z, 1.0), variance_loss(scaled(z)))
    torch.testing.assert_close(covariance_term(z), covariance_loss(scaled(z)))
    assert float(variance_term(z)) > 0 and float(covariance_term(z)) > 0


def test_variance_term_is_zero_when_spread_and_near_target_when_identical():
    # Rows +-e_i: every dimension has mean 0 and the batch variance of a scaled one-hot design.
    eye = torch.eye(DIM)
    spread = torch.cat([eye, -eye]) * 5.0
    assert float(variance_term(spread, 1.0)) == 0.0
    same = torch.randn(1, DIM).repeat(10, 1)
    assert float(variance_term(same, 1.0)) == pytest.approx(1.0 - 1e-2, abs=1e-4)
    assert float(variance_term(same, 0.5)) == pytest.approx(0.5 - 1e-2, abs=1e-4)
    assert float(covariance_term(same)) == pytest.approx(0.0, abs=1e-10)


def test_terms_ignore_the_scale_of_the_outputs():
    z = torch.randn(16, DIM)
    for factor in (1e-3, 10.0, 1e4):
        torch.testing.assert_close(variance_term(z * factor), variance_term(z))
        torch.testing.assert_close(covariance_term(z * factor), covariance_term(z))


def test_a_big_shared_direction_meets_the_raw_hinge_but_not_ours():
    """The collapse the term is for: every image near one direction, large logits."""
    mean = torch.randn(DIM) * 1000.0
    z = mean + 5.0 * torch.randn(64, DIM)
    raw = variance_loss(z)  # VICReg's hinge on the raw outputs: std ~5 >= 1, so no penalty
    assert float(raw) == 0.0
    cosines = F.cosine_similarity(z, mean.expand_as(z), dim=-1)
    assert float(cosines.min()) > 0.99  # collapsed by the cosine
    assert float(variance_term(z)) > 0.8  # ours sees it: close to the full target of 1


def test_terms_need_two_samples_and_a_matrix():
    for term in (variance_term, covariance_term):
        with pytest.raises(ValueError, match="batch >= 2"):
            term(torch.randn(1, DIM))
        with pytest.raises(ValueError, match="batch >= 2"):
            term(torch.randn(4, 2, DIM))


# ---------------------------------------------------------------------------------- objective
def test_default_objective_is_exactly_the_papers_loss():
    c, v = outputs()
    objective = CASSObjective(DIM)
    assert objective.predictors is None
    terms = objective([c], [v])
    assert set(terms) == {"loss", "align"}
    assert torch.equal(terms["loss"], cass_loss(c, v))
    terms["loss"].backward()
    assert c.grad is not None and c.grad.abs().sum() > 0
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_alternate_predictor_trains_one_arm_per_step():
    objective = CASSObjective(DIM, predictor="alternate", predictor_hidden_dim=8)
    preds = objective.predictors
    for step, online, idle in ((0, "cnn", "vit"), (1, "vit", "cnn"), (2, "cnn", "vit")):
        objective.zero_grad(set_to_none=True)
        c, v = outputs()
        x = {"cnn": c, "vit": v}
        loss = objective([c], [v], step=step)["loss"]
        other = v if online == "cnn" else c
        expected = cass_loss(preds[online](x[online]), other.detach())
        torch.testing.assert_close(loss, expected)
        loss.backward()
        assert x[online].grad is not None and x[online].grad.abs().sum() > 0
        assert x[idle].grad is None  # the target is held fixed (stop-gradient)
        assert all(p.grad is not None for p in preds[online].parameters())
        assert all(p.grad is None for p in preds[idle].parameters())


def test_alternate_predictor_uses_both_directions_outside_training():
    objective = CASSObjective(DIM, predictor="alternate", predictor_hidden_dim=8).eval()
    assert objective.online_arms(0, training=False) == ("cnn", "vit")
    assert objective.online_arms(1, training=True) == ("vit",)
    c, v = outputs()
    with torch.no_grad():
        loss = objective([c], [v], step=0, training=False)["loss"]
        p = objective.predictors
        expected = 0.5 * (cass_loss(p["cnn"](c), v) + cass_loss(p["vit"](v), c))
    torch.testing.assert_close(loss, expected)


def test_symmetric_predictor_is_the_mean_of_both_stop_gradient_directions():
    objective = CASSObjective(DIM, predictor="symmetric", predictor_hidden_dim=8)
    p = objective.predictors
    c, v = outputs()
    loss = objective([c], [v], step=1)["loss"]
    expected = 0.5 * (cass_loss(p["cnn"](c), v.detach()) + cass_loss(p["vit"](v), c.detach()))
    torch.testing.assert_close(loss, expected)
    # Each input's gradient comes only through its own predictor's direction.
    (grad_c,) = torch.autograd.grad(0.5 * cass_loss(p["cnn"](c), v.detach()), c)
    (grad_v,) = torch.autograd.grad(0.5 * cass_loss(p["vit"](v), c.detach()), v)
    loss.backward()
    torch.testing.assert_close(c.grad, grad_c)
    torch.testing.assert_close(v.grad, grad_v)
    for arm in ("cnn", "vit"):
        assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in p[arm].parameters())


def test_predictor_shape():
    predictor = build_predictor(DIM, 8)
    assert predictor(torch.randn(4, DIM)).shape == (4, DIM)
    assert [type(m).__name__ for m in predictor] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


@pytest.mark.parametrize("predictor", ["none", "alternate", "symmetric"])
def test_ema_targets_replace_the_other_arm_and_get_no_gradient(predictor):
    objective = CASSObjective(DIM, predictor=predictor, predictor_hidden_dim=8)
    c, v = outputs()
    tc, tv = outputs()  # requires_grad=True on purpose: the objective must not use it
    loss = objective([c], [v], cnn_target=[tc], vit_target=[tv], step=0)["loss"]
    p = objective.predictors
    pc = p["cnn"](c) if p is not None else c
    pv = p["vit"](v) if p is not None else v
    if predictor == "alternate":
        expected = cass_loss(pc, tv.detach())
    else:
        expected = 0.5 * (cass_loss(pc, tv.detach()) + cass_loss(pv, tc.detach()))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert tc.grad is None and tv.grad is None
    assert c.grad is not None and c.grad.abs().sum() > 0
    if predictor != "alternate":
        assert v.grad is not None and v.grad.abs().sum() > 0


def test_ema_targets_for_one_arm_only_are_refused():
    c, v = outputs()
    objective = CASSObjective(DIM)
    with pytest.raises(ValueError, match="both arms or for neither"):
        objective([c], [v], cnn_target=[c.detach()])
    with pytest.raises(ValueError, match="both arms or for neither"):
        objective([c], [v], vit_target=[v.detach()])


def test_two_views_are_crossed_and_averaged():
    assert view_pairs(1) == [(0, 0)]
    assert view_pairs(2) == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match="got 3"):
        view_pairs(3)
    c0, v0 = outputs()
    c1, v1 = outputs()
    objective = CASSObjective(DIM)
    loss = objective([c0, c1], [v0, v1])["loss"]
    torch.testing.assert_close(loss, 0.5 * (cass_loss(c0, v1) + cass_loss(c1, v0)))
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (c0, c1, v0, v1))
    with pytest.raises(ValueError, match="view"):
        objective([c0, c1, c0], [v0, v1, v0])
    with pytest.raises(ValueError, match="2 CNN views and 1 ViT views"):
        objective([c0, c1], [v0])


def test_two_views_with_a_symmetric_predictor_and_ema_targets():
    objective = CASSObjective(DIM, predictor="symmetric", predictor_hidden_dim=8)
    p = objective.predictors
    c0, v0 = outputs()
    c1, v1 = outputs()
    t = [torch.randn(8, DIM) for _ in range(4)]  # targets: cnn view 0/1, vit view 0/1
    loss = objective([c0, c1], [v0, v1], cnn_target=t[:2], vit_target=t[2:])["loss"]
    expected = (
        cass_loss(p["cnn"](c0), t[3])  # pair (0, 1): CNN(view 0) predicts the ViT target, view 1
        + cass_loss(p["vit"](v1), t[0])
        + cass_loss(p["cnn"](c1), t[2])  # pair (1, 0)
        + cass_loss(p["vit"](v0), t[1])
    ) / 4
    torch.testing.assert_close(loss, expected)


def test_variance_and_covariance_weights_add_their_terms():
    c, v = outputs()
    objective = CASSObjective(DIM, variance_weight=2.0, covariance_weight=0.5, variance_target=0.7)
    terms = objective([c], [v])
    variance = 0.5 * (variance_term(c, 0.7) + variance_term(v, 0.7))
    covariance = 0.5 * (covariance_term(c) + covariance_term(v))
    torch.testing.assert_close(terms["variance"], variance)
    torch.testing.assert_close(terms["covariance"], covariance)
    torch.testing.assert_close(terms["align"], cass_loss(c, v))
    torch.testing.assert_close(terms["loss"], cass_loss(c, v) + 2.0 * variance + 0.5 * covariance)
    only_variance = CASSObjective(DIM, variance_weight=1.0)([c], [v])
    assert "covariance" not in only_variance and "variance" in only_variance


def test_variance_term_pushes_a_collapsed_batch_apart():
    z = (torch.randn(1, DIM) + 0.01 * torch.randn(16, DIM)).requires_grad_(True)
    v = torch.randn(16, DIM)
    objective = CASSObjective(DIM, variance_weight=1.0)
    optimizer = torch.optim.Adam([z], lr=0.05)
    start = float(variance_term(z.detach()))
    assert start > 0.9
    for _ in range(60):
        optimizer.zero_grad()
        objective([z], [v])["loss"].backward()
        optimizer.step()
    assert float(variance_term(z.detach())) < 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variance_weight=-0.1), "must be >= 0"),
        (dict(covariance_weight=-1.0), "must be >= 0"),
        (dict(predictor="byol"), "predictor must be one of"),
    ],
)
def test_bad_objective_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CASSObjective(DIM, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(predictor="alternate"),
        dict(predictor="symmetric"),
        dict(variance_weight=1.0, covariance_weight=0.04),
        dict(predictor="symmetric", variance_weight=1.0, covariance_weight=0.04, ema=True),
    ],
)
@pytest.mark.parametrize("views", [1, 2])
def test_every_remedy_is_finite_in_bf16_autocast(kwargs, views):
    kwargs = dict(kwargs)
    ema = kwargs.pop("ema", False)
    objective = CASSObjective(DIM, predictor_hidden_dim=8, **kwargs)
    base = [torch.randn(8, DIM).bfloat16().requires_grad_(True) for _ in range(2 * views)]
    cnn, vit = base[:views], base[views:]
    targets = {}
    if ema:
        targets = dict(
            cnn_target=[torch.randn(8, DIM).bfloat16() for _ in range(views)],
            vit_target=[torch.randn(8, DIM).bfloat16() for _ in range(views)],
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = objective(cnn, vit, **targets)
    assert terms["loss"].dtype == torch.float32
    assert all(torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    grads = [t.grad for t in base if t.grad is not None]
    grads += [q.grad for q in objective.parameters() if q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------- freezing stages
def resnet() -> torch.nn.Module:
    return timm.create_model("resnet10t", num_classes=8)


def vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", num_classes=8, img_size=32, patch_size=8)


def frozen_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_freezing_resnet_stages():
    model = resnet()
    assert freeze_stages(model, 0) == [] and not frozen_names(model)

    one = resnet()
    modules = freeze_stages(one, 1)
    frozen = frozen_names(one)
    assert frozen == {n for n, _ in one.named_parameters() if n.startswith(("conv1.", "bn1."))}
    assert {"conv1", "bn1", "conv1.1", "conv1.4"} <= set(modules)
    assert not any(m.startswith(("layer", "fc")) for m in modules)

    two = resnet()
    modules = freeze_stages(two, 2)
    assert frozen_names(two) == {
        n for n, _ in two.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))
    }
    assert "layer1" in modules and "layer1.0.bn1" in modules and "layer2" not in modules

    every = resnet()
    freeze_stages(every, 5)  # stem + layer1..layer4: everything but the classifier
    trainable = {n for n, p in every.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    with pytest.raises(ValueError, match="cannot freeze 6 stages"):
        freeze_stages(resnet(), 6)


def test_freezing_vit_stages():
    model = vit()
    freeze_stages(model, 1)
    assert frozen_names(model) == {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
    }
    model = vit()
    modules = freeze_stages(model, 3)
    assert {"patch_embed", "blocks.0", "blocks.1"} <= set(modules)
    assert "blocks.2" not in modules
    assert not any(n.startswith("blocks.2.") for n in frozen_names(model))
    model = vit()
    freeze_stages(model, 13)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
    }
    with pytest.raises(ValueError, match="cannot freeze 14 stages"):
        freeze_stages(vit(), 14)


@pytest.mark.parametrize("stages", [-1, 1.5, True, "2"])
def test_bad_stage_counts_are_refused(stages):
    with pytest.raises(ValueError, match="freeze stages must be an int >= 0"):
        freeze_stages(resnet(), stages)


def test_a_model_without_group_matcher_cannot_be_frozen():
    with pytest.raises(ValueError, match="group_matcher"):
        freeze_stages(torch.nn.Sequential(torch.nn.Linear(2, 2)), 1)


def test_frozen_batchnorm_stays_in_eval_after_train():
    model = resnet()
    modules = freeze_stages(model, 2)
    model.train()
    keep_frozen_in_eval(model, modules)
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training and model.fc.training
    stats = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, stats)


# --------------------------------------------------------------------------- layer-wise lr decay
def layer_lr_scales(model: torch.nn.Module, decay: float) -> dict[str, float]:
    """Parameter name -> the lr multiplier its optimiser group would give it under layer decay
    (frozen ones included: measured on a fully trainable copy)."""
    model = copy.deepcopy(model).requires_grad_(True)
    groups = arm_param_groups("cnn", [model], lr=1.0, weight_decay=0.0, layer_decay=decay)
    factor = {id(p): g["layer_lr_factor"] for g in groups for p in g["params"]}
    return {name: factor[id(p)] for name, p in model.named_parameters()}


def test_layer_lr_scales_of_a_resnet():
    model = resnet()
    scales = layer_lr_scales(model, 0.5)
    assert scales.keys() == dict(model.named_parameters()).keys()
    assert scales["fc.weight"] == scales["fc.bias"] == 1.0
    assert scales["layer4.0.conv1.weight"] == 0.5
    assert scales["layer1.0.conv1.weight"] == 0.5**4
    assert scales["conv1.0.weight"] == scales["bn1.weight"] == 0.5**5 == min(scales.values())
    assert layer_lr_scales(model, 1.0) == dict.fromkeys(scales, 1.0)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="layer_decay"):
            layer_lr_scales(model, bad)


def test_layer_lr_scales_of_a_vit_decrease_towards_the_stem():
    model = vit()
    scales = layer_lr_scales(model, 0.75)
    assert scales["head.weight"] == 1.0
    assert scales["blocks.11.mlp.fc1.weight"] == scales["norm.weight"] == 0.75
    assert scales["blocks.10.mlp.fc1.weight"] == 0.75**2
    assert scales["blocks.0.attn.qkv.weight"] == pytest.approx(0.75**12)
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed"):
        assert scales[name] == pytest.approx(0.75**13) == min(scales.values())
    ordered = [scales[f"blocks.{i}.attn.qkv.weight"] for i in range(12)]
    assert ordered == sorted(ordered)


@pytest.mark.parametrize("make", [resnet, vit])
def test_layer_decay_groups_cover_every_trainable_parameter_once(make):
    model = make()
    freeze_stages(model, 1)
    head = torch.nn.Linear(8, 4)
    decay, lr = 0.5, 1e-3
    groups = arm_param_groups("cnn", [model, head], lr=lr, weight_decay=0.05, layer_decay=decay)
    scales = layer_lr_scales(model, decay)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    assert len(seen) == len(set(seen)) == len(trainable)
    assert set(seen) == {id(p) for p in trainable}
    names = {id(p): n for n, p in model.named_parameters()}
    head_ids = {id(p) for p in head.parameters()}
    for group in groups:
        assert group["lr"] == pytest.approx(lr * group["layer_lr_factor"])
        assert group["weight_decay"] == (0.0 if group["name"].endswith("_no_decay") else 0.05)
        depth = round(math.log(group["layer_lr_factor"], decay))
        base = "cnn" if depth == 0 else f"cnn_d{depth}"
        assert group["name"] in (base, f"{base}_no_decay")
        for p in group["params"]:
            # the extra modules (head, predictor) keep the full lr
            want = 1.0 if id(p) in head_ids else scales[names[id(p)]]
            assert group["layer_lr_factor"] == pytest.approx(want)
    assert len({g["name"] for g in groups}) == len(groups)
    # The stem is frozen, so the smallest remaining scale is one stage up.
    assert min(g["layer_lr_factor"] for g in groups) == pytest.approx(
        min(scales[n] for n, p in model.named_parameters() if p.requires_grad)
    )
    optimizer = torch.optim.Adam(groups)
    assert group_learning_rates(optimizer) == {"lr/cnn": pytest.approx(lr)}


def test_without_layer_decay_the_groups_are_the_plain_two():
    model = resnet()
    groups = arm_param_groups("vit", [model], lr=2e-3, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["vit", "vit_no_decay"]
    assert all(g["lr"] == 2e-3 and g["layer_lr_factor"] == 1.0 for g in groups)


# ----------------------------------------------------------------------------------- strategy
@pytest.mark.parametrize("name", ["ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_idle_parameters_switch_ddp_to_find_unused(name):
    assert strategy_for_idle_parameters(name, True) == f"{name}_find_unused_parameters_true"
    assert strategy_for_idle_parameters(name, False) == name


@pytest.mark.parametrize("strategy", ["auto", "fsdp", "ddp_find_unused_parameters_true", None])
def test_other_strategies_are_left_alone(strategy):
    assert strategy_for_idle_parameters(strategy, True) == strategy
    obj = object()
    assert strategy_for_idle_parameters(obj, True) is obj
