"""The DINO baseline: multi-crop views, the student/EMA-teacher module, the app and the export."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from app_helpers import compose_app
from cass_lightning.apps.pretrain import pretrain
from cass_lightning.data import SyntheticDataModule
from cass_lightning.data.views import default_local_size, dino_views
from cass_lightning.export import load_backbone, read_meta
from cass_lightning.modules.dino import DINOModule

#: A small DINO head, so the tests spend their time on the backbones.
SMALL_HEAD = dict(dim=32, hidden_dim=64, bottleneck_dim=16)
TINY_DINO = dict(cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head=SMALL_HEAD)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def _views(batch: int = 4, local: int = 2, size: int = 32) -> list[torch.Tensor]:
    small = default_local_size(size)
    return [torch.randn(batch, 3, size, size) for _ in range(2)] + [
        torch.randn(batch, 3, small, small) for _ in range(local)
    ]


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def _fit(model: DINOModule, steps: int) -> L.Trainer:
    loader = DataLoader([[_views(), torch.zeros(4)] for _ in range(steps)], batch_size=None)
    trainer = _trainer(max_steps=steps, log_every_n_steps=1)  # lr and schedules: on logging steps
    trainer.fit(model, loader)
    return trainer


def test_multi_crop_gives_global_and_local_views_that_collate_to_a_list():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    views = dino_views(32, local_crops=3)(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 3
    views = dino_views(64, global_crops=3, local_crops=0)(image)
    assert [tuple(v.shape) for v in views] == [(3, 64, 64)] * 3
    assert [v.shape[-1] for v in dino_views(32, local_size=9)(image)[2:]] == [9] * 6
    assert default_local_size(224) == 96 and default_local_size(8) == 8
    views, labels = default_collate([(dino_views(32)(image), 1), (dino_views(32)(image), 2)])
    assert len(views) == 8 and tuple(views[0].shape) == (2, 3, 32, 32)
    assert labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match="at least two"):
        dino_views(32, global_crops=1, local_crops=0)
    with pytest.raises(ValueError, match="local_scale"):
        dino_views(32, local_scale=(0.5, 0.1))


def test_datamodule_multi_crop_only_for_pretraining(tmp_path):
    data = SyntheticDataModule(
        tmp_path / "data", images_per_class=2, val_images_per_class=1, image_size=32,
        img_size=32, batch_size=4, train_views="dino",
    )  # fmt: skip
    data.prepare_data()
    data.setup()
    views, _ = next(iter(data.train_dataloader()))
    assert len(views) == 8 and tuple(views[-1].shape) == (4, 3, 14, 14)
    images, _ = next(iter(data.labelled_train_dataloader()))
    assert tuple(images.shape) == (4, 3, 32, 32)  # fine-tuning keeps the single paper view
    with pytest.raises(ValueError, match="train_views"):
        SyntheticDataModule(tmp_path / "data", train_views="two")


class _SeenBatch(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch


def test_dinos_own_batch_hook_still_runs_with_the_projects_datamodule(tmp_path):
    """The datamodule's device work must not replace DINO's ``on_after_batch_transfer`` (Lightning
    calls only the datamodule's when both define that hook)."""
    data = SyntheticDataModule(
        tmp_path / "data", images_per_class=2, val_images_per_class=1, image_size=32,
        img_size=32, batch_size=4, train_views="dino",
    )  # fmt: skip
    seen = _SeenBatch()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_steps=1,
                        limit_val_batches=0, callbacks=[seen])  # fmt: skip
    trainer.fit(DINOModule(arm="cnn", **TINY_DINO), data)
    assert isinstance(seen.batch, dict) and len(seen.batch["views"]) == 8
    assert seen.batch["image"] is seen.batch["views"][0]


@pytest.mark.parametrize("arm", ["cnn", "vit"])
def test_trains_a_few_steps_with_finite_loss(arm):
    model = DINOModule(arm=arm, **TINY_DINO)
    trainer = _fit(model, steps=3)
    assert trainer.global_step == 3
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert f"lr/{arm}" in trainer.callback_metrics
    assert "train/ema_momentum" in trainer.callback_metrics


def test_teacher_gets_no_gradient_and_moves_by_ema_only():
    model = DINOModule(
        arm="vit", distillation=dict(momentum_start=0.9, momentum_end=0.9), **TINY_DINO
    )
    student = [p.detach().clone() for p in model.student_backbone.parameters()]
    teacher = [p.detach().clone() for p in model.teacher_backbone.parameters()]
    assert all(torch.equal(s, t) for s, t in zip(student, teacher))  # starts as the student
    _fit(model, steps=1)
    assert all(not p.requires_grad and p.grad is None for p in model.teacher_backbone.parameters())
    assert all(not p.requires_grad for p in model.teacher_head.parameters())
    new_student = [p.detach() for p in model.student_backbone.parameters()]
    new_teacher = [p.detach() for p in model.teacher_backbone.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(student, new_student))  # optimiser moved it
    for old, s, t in zip(teacher, new_student, new_teacher):
        torch.testing.assert_close(t, 0.9 * old + 0.1 * s)


def test_single_tensor_batch_names_the_fix():
    model = DINOModule(arm="cnn", **TINY_DINO)
    for batch in (torch.randn(2, 3, 32, 32), [torch.randn(2, 3, 32, 32), torch.zeros(2)]):
        with pytest.raises(ValueError, match=r"data\.train_views=dino"):
            model.training_step(batch, 0)


def test_non_finite_loss_stops_training():
    model = DINOModule(arm="cnn", **TINY_DINO)
    views = [v.fill_(float("nan")) for v in _views()]
    loader = DataLoader([[views, torch.zeros(4)]], batch_size=None)
    with pytest.raises(FloatingPointError, match=r"non-finite DINO loss .* at global step 0"):
        _trainer(max_steps=1).fit(model, loader)


def test_app_runs_dino_tiny_and_exports_a_loadable_arm(tmp_path):
    overrides = ["model=dino", "debug=tiny", "print_config=false", "rich_progress_bar=false"]
    overrides += [f"model.head.{k}={v}" for k, v in SMALL_HEAD.items()]
    cfg = compose_app(tmp_path, overrides)
    # No views set in the config: the app gives DINO the multi-crop views its model declares.
    assert cfg.data.train_views is None and cfg.model.vit == "vit_tiny_patch16_224"
    result = pretrain(cfg)
    assert math.isfinite(result["metrics"]["train/loss_epoch"])
    assert result["metrics"]["perf/images_per_s"] > 0  # the shared callbacks read DINO batches
    assert "val/loss" in result["metrics"]
    meta = read_meta(result["export_dir"])
    assert (meta["method"], meta["vit"]["timm_name"]) == ("dino", "vit_tiny_patch16_224")
    assert "cnn" not in meta
    backbone = load_backbone(result["export_dir"], "vit").eval()
    model = DINOModule.load_from_checkpoint(result["last_checkpoint"]).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), model.backbone(images))


def test_export_writes_one_arm_and_never_overwrites(tmp_path):
    model = DINOModule(arm="cnn", **TINY_DINO)
    out = model.export(tmp_path / "export", network="teacher")
    assert read_meta(out)["network"] == "teacher"
    assert load_backbone(out, "cnn").num_features == model.backbone.num_features
    with pytest.raises(FileExistsError):
        model.export(out)


# ------------------------------------------------- DINO's lr rule and weight-decay schedule
def test_config_scales_the_lr_by_dinos_rule_unless_the_user_sets_another(tmp_path):
    cfg = compose_app(tmp_path, ["model=dino"])
    assert (cfg.lr_scaling.rule, cfg.lr_scaling.base_batch_size) == ("linear", 256)
    assert (cfg.model.optimizer.lr, cfg.model.optimizer.weight_decay) == (5e-4, 0.04)
    assert cfg.model.optimizer.weight_decay_end == 0.4
    cfg = compose_app(tmp_path, ["model=dino", "lr_scaling.rule=none"])
    assert (cfg.lr_scaling.rule, cfg.lr_scaling.base_batch_size) == ("none", 256)
    cfg = compose_app(tmp_path, ["model=dino", "lr_scaling.rule=sqrt",
                                 "lr_scaling.base_batch_size=64"])  # fmt: skip
    assert (cfg.lr_scaling.rule, cfg.lr_scaling.base_batch_size) == ("sqrt", 64)
    cass = compose_app(tmp_path, [])  # CASS keeps the paper's unscaled lr
    assert (cass.lr_scaling.rule, cass.lr_scaling.base_batch_size) == ("none", 16)


def _expected_wd(step: int, total: int, start: float = 0.04, end: float = 0.4) -> float:
    """DINO's weight-decay cosine, written out: start at step 0, end at the last step."""
    return end - (end - start) * (math.cos(math.pi * step / (total - 1)) + 1) / 2


class _GroupDecay(L.Callback):
    """The weight decay each optimiser group steps with, per step."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.seen.append({g["name"]: g["weight_decay"] for g in optimizer.param_groups})


@pytest.mark.parametrize("arm", ["cnn", "vit"])
def test_weight_decay_rises_along_dinos_cosine_every_step(arm):
    model = DINOModule(arm=arm, **TINY_DINO)
    steps, record = 4, _GroupDecay()
    loader = DataLoader([[_views(), torch.zeros(4)] for _ in range(steps)], batch_size=None)
    trainer = _trainer(max_steps=steps, callbacks=[record], log_every_n_steps=1)
    trainer.fit(model, loader)
    decayed = [s[arm] for s in record.seen]
    assert len(decayed) == steps
    assert decayed[0] == pytest.approx(0.04) and decayed[-1] == pytest.approx(0.4)
    assert decayed == pytest.approx([_expected_wd(t, steps) for t in range(steps)])
    assert all(s[f"{arm}_no_decay"] == 0.0 for s in record.seen)  # norms and biases
    assert float(trainer.callback_metrics[f"wd/{arm}"]) == pytest.approx(0.4)  # the last step
    constant = DINOModule(arm=arm, optimizer={"weight_decay_end": None}, **TINY_DINO)
    record = _GroupDecay()
    _trainer(max_steps=2, callbacks=[record]).fit(constant, loader)
    assert [s[arm] for s in record.seen] == [0.04, 0.04]


def test_checkpoints_record_the_schedule_and_older_ones_keep_a_constant_decay(tmp_path):
    model = DINOModule(arm="cnn", optimizer={"lr": 1e-3}, **TINY_DINO)
    assert model.hparams.optimizer["weight_decay_end"] == 0.4  # saved resolved
    trainer = _trainer(max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    again = DINOModule.load_from_checkpoint(tmp_path / "new.ckpt", weights_only=True)
    assert again.optimizer_cfg["weight_decay_end"] == 0.4 and again.optimizer_cfg["lr"] == 1e-3
    state = torch.load(tmp_path / "new.ckpt", weights_only=True)
    del state["hyper_parameters"]["optimizer"]["weight_decay_end"]  # as written before
    torch.save(state, tmp_path / "old.ckpt")
    old = DINOModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
    assert old.optimizer_cfg["weight_decay_end"] is None and old.optimizer_cfg["lr"] == 1e-3
    assert old.weight_decay_now() == 0.04
    with pytest.raises(ValueError, match="weight_decay_end must be >= 0"):
        DINOModule(arm="cnn", optimizer={"weight_decay_end": -1.0}, **TINY_DINO)


# ----------------------------------------------- experiment=dino_reference vs paper_reference
#: Settings the DINO baseline must share with CASS's paper_reference (everything else is DINO's).
SHARED_KEYS = (
    "seed", "model.cnn", "model.vit", "model.img_size", "model.in_chans", "model.pretrained",
    "model.cnn_weights_file", "model.vit_weights_file", "model.cnn_kwargs", "model.vit_kwargs",
    "data.batch_size", "trainer.max_epochs", "trainer.precision", "trainer.accelerator",
    "trainer.devices", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val",
)  # fmt: skip


def test_dino_reference_matches_paper_reference_setting_by_setting(tmp_path):
    weights = ["model.cnn_weights_file=/w/resnet50.safetensors",
               "model.vit_weights_file=/w/vit_b16_384.safetensors"]  # fmt: skip
    cass = compose_app(tmp_path, ["experiment=paper_reference", *weights])
    dino = compose_app(tmp_path, ["experiment=dino_reference", "model.arm=cnn", *weights])
    for key in SHARED_KEYS:
        assert OmegaConf.select(dino, key) == OmegaConf.select(cass, key), key
    assert (dino.model.cnn, dino.model.vit, dino.model.img_size) == (
        "resnet50", "vit_base_patch16_384", 384,
    )  # fmt: skip
    assert dino.model.pretrained is True
    assert dino.model.cnn_weights_file == "/w/resnet50.safetensors"
    assert (dino.seed, dino.data.batch_size, dino.trainer.max_epochs) == (77, 16, 100)
    assert dino.trainer.precision == "32-true"
    # The same data config; the views each method trains on come from its model, not the config.
    assert OmegaConf.to_container(dino.data) == OmegaConf.to_container(cass.data)
    assert dino.data.train_views is None
    # DINO's own optimiser, schedules and lr rule; the arm is the user's choice.
    assert dino.model._target_.endswith("DINOModule") and dino.model.arm == "cnn"
    assert (dino.model.optimizer.name, dino.model.optimizer.lr) == ("adamw", 5e-4)
    assert (dino.model.optimizer.weight_decay, dino.model.optimizer.weight_decay_end) == (0.04, 0.4)
    assert dino.model.scheduler.name == "warmup_cosine"
    assert (dino.lr_scaling.rule, dino.lr_scaling.base_batch_size) == ("linear", 256)
    assert (cass.lr_scaling.rule, cass.model.optimizer.name) == ("none", "adam")
    assert compose_app(tmp_path, ["experiment=dino_reference"]).model.arm == "vit"
