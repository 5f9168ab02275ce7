"""CASSModule inside a real Lightning Trainer, on the tiniest real timm arms."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from cass_lightning import CASSModule
from cass_lightning.export import export_module, load_backbone, read_meta
from cass_lightning.modules.ablation import AccumulatingCASSModule
from cass_lightning.runtime import apply_speed_switches
from run_helpers import images, make_trainer


def test_one_step_equals_two_adams_by_hand(tiny_kwargs):
    """One Adam with per-arm groups == the notebook's two Adams + two per-step cosines."""
    model = CASSModule(**tiny_kwargs)
    cnn, vit = copy.deepcopy(model.cnn), copy.deepcopy(model.vit)
    x = images(8)
    steps = 3
    make_trainer(max_steps=steps).fit(model, DataLoader(x, batch_size=8))

    opt_c = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    opt_v = torch.optim.Adam(vit.parameters(), lr=1e-3)
    sch_c = torch.optim.lr_scheduler.CosineAnnealingLR(opt_c, T_max=16, eta_min=1e-6)
    sch_v = torch.optim.lr_scheduler.CosineAnnealingLR(opt_v, T_max=16, eta_min=1e-6)
    cnn.train()
    vit.train()
    for _ in range(steps):
        opt_c.zero_grad()
        opt_v.zero_grad()
        loss = (2 - 2 * F.cosine_similarity(vit(x), cnn(x), dim=-1)).mean()
        loss.backward()
        opt_c.step()
        opt_v.step()
        sch_c.step()
        sch_v.step()

    for mine, ref in ((model.cnn, cnn), (model.vit, vit)):
        for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)
    assert not torch.allclose(model.cnn.fc.weight, copy.deepcopy(cnn).fc.weight * 0)


def test_thirty_steps_on_a_fixed_batch_reduce_the_loss(tiny_kwargs):
    model = CASSModule(**tiny_kwargs, scheduler={"name": "none"})
    x = images(16)
    with torch.no_grad():
        model.eval()
        start = F.mse_loss(*map(lambda z: F.normalize(z, dim=-1), model(x)), reduction="sum") / 16
    model.train()
    trainer = make_trainer(max_steps=30)
    trainer.fit(model, DataLoader(x, batch_size=16))
    final = trainer.callback_metrics["train/loss_step"].item()
    assert final < 0.5 * start.item()
    assert final < 0.2


@pytest.mark.parametrize("fmt", ["tensor", "tuple", "list", "dict"])
def test_every_batch_format_trains(tiny_kwargs, fmt):
    x, y = images(8), torch.arange(8)
    if fmt == "tensor":
        data = DataLoader(x, batch_size=4)
    elif fmt == "tuple":
        data = DataLoader(TensorDataset(x, y), batch_size=4)
    elif fmt == "list":

        def as_list(items):
            return [torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])]

        data = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=as_list)
    else:
        data = DataLoader([{"image": xi, "label": yi} for xi, yi in zip(x, y)], batch_size=4)
    model = CASSModule(**tiny_kwargs)
    before = model.cnn.fc.weight.detach().clone()
    trainer = make_trainer(max_steps=2)
    trainer.fit(model, data)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, model.cnn.fc.weight)


def test_bad_batches_are_named(tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    with pytest.raises(KeyError, match="'image'"):
        model.training_step({"img": images(2)}, 0)
    with pytest.raises(ValueError, match=r"\(batch, channels, H, W\)"):
        model.training_step(torch.randn(3, 32, 32), 0)


def test_logs_collapse_signals_and_lr_per_arm(tiny_kwargs):
    model = CASSModule(**tiny_kwargs, optimizer={"cnn_lr": 2e-4, "vit_lr": 5e-4},
                       scheduler={"name": "none"})  # fmt: skip
    trainer = make_trainer(max_steps=2, log_every_n_steps=2)  # lr: logged on logging steps only
    trainer.fit(model, DataLoader(images(8), batch_size=4))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/cosine", "train/cnn_std", "train/vit_std",
                "train/cnn_pooled_std", "train/vit_pooled_std"):  # fmt: skip
        assert key in metrics and torch.isfinite(metrics[key])
    assert metrics["lr/cnn"].item() == pytest.approx(2e-4)
    assert metrics["lr/vit"].item() == pytest.approx(5e-4)
    assert -1.0 <= metrics["train/cosine"].item() <= 1.0


def test_param_groups_cover_every_parameter_once(tiny_kwargs):
    model = CASSModule(**tiny_kwargs, head="projector", optimizer={"weight_decay": 0.05})
    groups = model.param_groups()
    assert {g["name"] for g in groups} == {"cnn", "cnn_no_decay", "vit", "vit_no_decay"}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    cnn_ids = {id(p) for g in groups if g["name"].startswith("cnn") for p in g["params"]}
    assert {id(p) for p in model.cnn_head.parameters()} <= cnn_ids


def test_features_head_needs_equal_widths(tiny_kwargs):
    with pytest.raises(ValueError, match="head='projector'"):
        CASSModule(**{**tiny_kwargs, "head": "features"})


def test_gradient_accumulation_ablation_keeps_gradients(tiny_kwargs):
    """AccumulatingCASSModule reproduces the notebook: step 2 sees g1 + g2."""
    seen: list[torch.Tensor] = []

    class Grab(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(pl_module.cnn.fc.bias.grad.detach().clone())

    x = images(4)
    for flag, module in ((True, CASSModule), (False, AccumulatingCASSModule)):
        seen.clear()
        model = module(**tiny_kwargs, optimizer={"lr": 1e-30}, scheduler={"name": "none"})
        model.eval()  # fixed BatchNorm statistics: the same batch gives the same gradient
        trainer = make_trainer(max_steps=2, callbacks=[Grab()])
        model.train = lambda mode=True, m=model: m  # keep eval mode inside fit
        trainer.fit(model, DataLoader(x, batch_size=4))
        factor = 1.0 if flag else 2.0
        torch.testing.assert_close(seen[1], factor * seen[0], rtol=1e-4, atol=1e-7)


def test_bf16_mixed_on_cpu_stays_finite(tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    trainer = make_trainer(max_steps=3, precision="bf16-mixed")
    trainer.fit(model, DataLoader(images(8), batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_checkpoint_round_trip_without_hydra(tmp_path, tiny_kwargs):
    model = CASSModule(**tiny_kwargs, optimizer={"cnn_lr": 3e-4})
    trainer = make_trainer(max_steps=2, default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(model, DataLoader(images(8), batch_size=4))
    path = tmp_path / "manual.ckpt"
    trainer.save_checkpoint(path)
    loaded = CASSModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.cnn == "resnet10t" and loaded.optimizer_cfg["cnn_lr"] == 3e-4
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


@pytest.mark.parametrize("head", ["logits", "projector"])
def test_export_then_plain_timm_reload(tmp_path, tiny_kwargs, head):
    model = CASSModule(**{**tiny_kwargs, "head": head})
    make_trainer(max_steps=1).fit(model, DataLoader(images(4), batch_size=4))
    out = export_module(model, tmp_path / "export", source="test")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["head"] == head and meta["mean"] == [0.485, 0.456, 0.406]
    for arm in ("cnn", "vit"):
        entry = meta[arm]
        kwargs = {"img_size": entry["img_size"]} if entry["img_size"] else {}
        # Plain timm, exactly as a user would, with timm's strict loading.
        rebuilt = timm.create_model(
            entry["timm_name"],
            pretrained=True,
            # num_classes in the overlay stops timm from dropping a non-1000-wide classifier.
            pretrained_cfg_overlay=dict(
                file=str(out / entry["file"]), num_classes=entry["num_classes"]
            ),
            num_classes=entry["num_classes"],
            in_chans=entry["in_chans"],
            **kwargs,
        )
        source = getattr(model, arm)
        file_keys = set(load_file(str(out / entry["file"])))
        assert file_keys == set(rebuilt.state_dict()) == set(source.state_dict())
        for key, value in source.state_dict().items():
            torch.testing.assert_close(rebuilt.state_dict()[key], value)
        assert (entry["projector_file"] is not None) == (head == "projector")
        fresh = load_backbone(out, arm, num_classes=3)
        assert fresh.get_classifier().out_features == 3
    assert read_meta(out)["vit"]["img_size"] == 32


def test_export_refuses_to_overwrite(tmp_path, tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    export_module(model, tmp_path)
    before = (tmp_path / "cnn.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds an export"):
        export_module(model, tmp_path)
    assert (tmp_path / "cnn.safetensors").read_bytes() == before


def test_non_finite_loss_stops_with_the_step(tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    x = images(4)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="global step 0"):
        make_trainer(max_steps=1).fit(model, DataLoader(x, batch_size=4))


def test_batch_lr_factor_multiplies_every_group(tiny_kwargs):
    model = CASSModule(**tiny_kwargs, optimizer={"lr": 1e-3, "vit_lr": 2e-4}, batch_lr_factor=4.0)
    lrs = {g["name"]: g["lr"] for g in model.param_groups()}
    assert lrs["cnn"] == pytest.approx(4e-3) and lrs["vit_no_decay"] == pytest.approx(8e-4)


def test_channels_last_and_compile_switches(tiny_kwargs):
    model = CASSModule(**tiny_kwargs)
    apply_speed_switches(model, channels_last=True, compile=False)
    assert model.cnn.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = CASSModule(**tiny_kwargs)
    plain.load_state_dict(model.state_dict())
    x = images(2)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x)[0], plain(x)[0], atol=1e-5, rtol=1e-4)
    compiled = CASSModule(**tiny_kwargs)
    apply_speed_switches(compiled, channels_last=False, compile=True)
    # nn.Module.compile() works in place: the state-dict keys stay those of plain timm.
    assert compiled.cnn._compiled_call_impl is not None
    assert compiled.state_dict().keys() == plain.state_dict().keys()


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, tiny_kwargs):
    from lightning.pytorch.callbacks import ModelCheckpoint

    x = images(8)
    x[6:] = float("nan")  # the fourth batch of two
    model = CASSModule(**tiny_kwargs)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = make_trainer(max_steps=10, callbacks=[ckpt], enable_checkpointing=True)
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(model, DataLoader(x, batch_size=2))
    message = str(info.value)
    assert "global step 3" in message and "cnn and vit" in message
    assert "last finite loss" in message and "at step 2" in message
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3
    assert all(
        torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point()
    )


def test_collapse_signals_show_an_induced_collapse(tmp_path):
    """From random init on real-looking images (the synthetic set, the paper's augmentation)
    CASS collapses within a few epochs, as measured on real images: the logged cosine between
    the arms climbs towards 1 and the spread of the normalised outputs falls towards 0."""
    from cass_lightning.data import SyntheticDataModule

    data = SyntheticDataModule(tmp_path, images_per_class=8, val_images_per_class=1,
                               image_size=32, img_size=32, batch_size=16)  # fmt: skip
    model = CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32)
    first = make_trainer(max_steps=1, limit_val_batches=0)
    first.fit(model, datamodule=data)
    start_cos = float(first.callback_metrics["train/cosine_step"])
    start_std = float(first.callback_metrics["train/vit_std_step"])
    trainer = make_trainer(max_epochs=14, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert float(metrics["train/cosine_epoch"]) > max(0.95, start_cos)
    assert float(metrics["train/vit_std_epoch"]) < 0.3 * start_std


def test_collapse_monitor_warns_once_and_can_stop_the_run(tmp_path):
    from cass_lightning.callbacks import CollapseMonitor
    from cass_lightning.data import SyntheticDataModule

    data = SyntheticDataModule(tmp_path, images_per_class=8, val_images_per_class=1,
                               image_size=32, img_size=32, batch_size=16)  # fmt: skip
    model = CASSModule(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32)
    early = CollapseMonitor()
    make_trainer(max_epochs=1, limit_val_batches=0, callbacks=[early]).fit(model, datamodule=data)
    assert early.collapsed_at is None  # epoch 0 from random init: not collapsed yet

    monitor = CollapseMonitor(stop=True)
    trainer = make_trainer(max_epochs=30, limit_val_batches=0, callbacks=[monitor])
    with pytest.warns(UserWarning, match=r"CASS collapse at epoch \d+: mean cosine") as caught:
        trainer.fit(model, datamodule=data)
    ours = [str(w.message) for w in caught if "CASS collapse" in str(w.message)]
    assert len(ours) == 1 and "relative to 1/sqrt(1000)" in ours[0]
    assert monitor.collapsed_at is not None and trainer.current_epoch < 30
