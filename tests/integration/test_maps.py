"""Attention and Grad-CAM maps: right shapes and range, the models left as they were, and the
``LogAttentionMaps`` callback writing its grids on the expected epochs of a tiny real run."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import pytorch_grad_cam  # noqa: F401  (a dev dependency: the maps need it)
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from cass_lightning.callbacks import LogAttentionMaps
from cass_lightning.maps import (
    cnn_gradcam,
    gradcam_target_layer,
    jet,
    overlay_grid,
    vit_attention_map,
)
from cass_lightning.modules.cass import CASSModule

SIZE = 64  # ViT-Tiny: a 4x4 patch grid; resnet10t: a 2x2 last stage, so Grad-CAM can vary


@pytest.fixture(scope="module")
def model() -> CASSModule:
    torch.manual_seed(0)
    return CASSModule(
        cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=SIZE, head_dim=8, pretrained=False
    )


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, SIZE, SIZE)


def _hooks(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def _assert_maps(maps: torch.Tensor, batch: int) -> None:
    assert maps.shape == (batch, SIZE, SIZE)
    assert maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_vit_attention_map_shape_range_and_variation(model: CASSModule, images) -> None:
    maps = vit_attention_map(model.vit, images)
    _assert_maps(maps, 3)
    for single in maps:  # each map is scaled to use the whole [0, 1] range: not constant
        assert single.min() == 0.0 and single.max() == pytest.approx(1.0)


def test_vit_attention_is_the_cls_row_of_the_last_block(model: CASSModule) -> None:
    """Checked against the raw softmax of timm's last block (non-fused path): the map is its
    head-averaged CLS row over the patches, placed row-major on the patch grid and upsampled."""
    from timm.utils import AttentionExtract

    torch.manual_seed(1)
    images = torch.randn(1, 3, SIZE, SIZE)
    maps = vit_attention_map(model.vit, images)
    last = f"blocks.{len(model.vit.blocks) - 1}.attn.softmax"
    fused = [(m, m.fused_attn) for m in model.vit.modules() if hasattr(m, "fused_attn")]
    try:
        for module, _ in fused:
            module.fused_attn = False
        with torch.no_grad():
            raw = AttentionExtract(model.vit, names=[last])(images)[last]
    finally:
        model.train()
        for module, flag in fused:
            module.fused_attn = flag
    assert torch.allclose(raw.sum(dim=-1), torch.ones(()), atol=1e-5)  # a softmax, per query
    cls_row = raw.mean(dim=1)[0, 0, model.vit.num_prefix_tokens :].view(1, 1, 4, 4)
    expected = F.interpolate(cls_row, size=(SIZE, SIZE), mode="bilinear")[0, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    assert torch.allclose(maps[0], expected, atol=1e-5)


def test_vit_attention_restores_mode_and_fused_attention(model: CASSModule, images) -> None:
    model.train()
    fused = [m.fused_attn for m in model.vit.modules() if hasattr(m, "fused_attn")]
    hooks = _hooks(model.vit)
    vit_attention_map(model.vit, images)
    assert _hooks(model.vit) == hooks  # nothing left attached
    assert all(m.training for m in model.vit.modules())
    assert fused == [m.fused_attn for m in model.vit.modules() if hasattr(m, "fused_attn")]
    assert all(p.grad is None for p in model.vit.parameters())


def test_gradcam_shape_range_and_state(model: CASSModule, images) -> None:
    model.train()
    first = next(model.cnn.parameters())
    first.grad = torch.ones_like(first)  # an accumulated gradient must survive untouched
    hooks = _hooks(model.cnn)
    maps = cnn_gradcam(model.cnn, images)
    assert _hooks(model.cnn) == hooks  # grad-cam's hooks are released
    _assert_maps(maps, 3)
    assert maps.flatten(1).std(dim=1).max() > 0  # not all flat
    assert all(m.training for m in model.cnn.modules())
    assert all(p.requires_grad for p in model.cnn.parameters())
    assert torch.equal(first.grad, torch.ones_like(first))
    assert all(p.grad is None for p in list(model.cnn.parameters())[1:])
    first.grad = None
    assert images.grad is None and not images.requires_grad


def test_gradcam_targets(model: CASSModule, images) -> None:
    top = model.cnn.eval()(images).argmax(dim=1).tolist()
    model.train()
    default = cnn_gradcam(model.cnn, images)
    assert torch.allclose(default, cnn_gradcam(model.cnn, images, target=top), atol=1e-5)
    other = [(t + 1) % 8 for t in top]
    assert not torch.allclose(default, cnn_gradcam(model.cnn, images, target=other), atol=1e-5)
    assert torch.allclose(default, cnn_gradcam(model.cnn, images, target=torch.tensor(top)))
    _assert_maps(cnn_gradcam(model.cnn, images, target=0), 3)
    with pytest.raises(ValueError, match="3 images"):
        cnn_gradcam(model.cnn, images, target=[0, 1])


def test_missing_gradcam_is_reported_with_the_fix(
    model: CASSModule, images, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match="pip install grad-cam"):
        cnn_gradcam(model.cnn, images)
    with pytest.raises(ImportError, match="pip install grad-cam"):
        LogAttentionMaps().setup(None, model, "fit")  # type: ignore[arg-type]


def test_gradcam_target_layer_is_the_last_stage(model: CASSModule) -> None:
    assert gradcam_target_layer(model.cnn) is model.cnn.layer4
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    assert gradcam_target_layer(plain) is plain[2]


def test_jet_and_overlay_grid(images) -> None:
    colours = jet(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(colours[0], torch.tensor([0.0, 0.0, 0.5]))  # dark blue
    assert torch.allclose(colours[2], torch.tensor([0.5, 0.0, 0.0]))  # dark red
    maps = torch.rand(3, SIZE, SIZE)
    grid = overlay_grid(images, [maps, maps], mean=(0.5,) * 3, std=(0.25,) * 3)
    assert grid.dtype == np.uint8
    assert grid.shape == (3 * (SIZE + 2) + 2, 3 * (SIZE + 2) + 2, 3)  # 3 rows x (image, 2 maps)
    grey = overlay_grid(images[:, :1], [maps])  # one channel: shown in grey
    assert grey.shape == (3 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2, 3)
    with pytest.raises(ValueError, match="map of shape"):
        overlay_grid(images, [maps[:2]])


def test_callback_writes_grids_on_the_expected_epochs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(6, 3, 32, 32), torch.zeros(6, dtype=torch.long))
    train = DataLoader(data, batch_size=4, shuffle=True)
    val = DataLoader(data, batch_size=2)  # 3 images come from two batches
    module = CASSModule(
        cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=8, pretrained=False
    )
    callback = LogAttentionMaps(num_images=3, every_n_epochs=2, dirpath=tmp_path / "maps")
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=1,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(module, train, val)
    assert callback.images is not None and torch.equal(callback.images, data.tensors[0][:3])
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == ["epoch_001.png", "epoch_002.png"]  # every 2nd epoch and the last
    assert callback.saved == [tmp_path / "maps" / name for name in names]
    with Image.open(tmp_path / "maps" / "epoch_002.png") as grid:
        assert grid.size == (3 * 34 + 2, 3 * 34 + 2)
    assert module.training


def test_callback_draws_in_fp32_in_a_bf16_run(tmp_path: Path) -> None:
    """With bf16 weights (``precision="bf16-true"``) the maps are drawn on an fp32 copy."""
    data = TensorDataset(torch.randn(2, 3, 32, 32))
    module = CASSModule(
        cnn="resnet10t", vit="vit_tiny_patch16_224", img_size=32, head_dim=8, pretrained=False
    )
    callback = LogAttentionMaps(num_images=2, every_n_epochs=10)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        precision="bf16-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[callback],
    )
    trainer.fit(module, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    assert callback.saved == [tmp_path / "maps" / "epoch_000.png"]  # the last epoch draws
    assert next(module.vit.parameters()).dtype == torch.bfloat16


def test_callback_rejects_no_images() -> None:
    with pytest.raises(ValueError, match="num_images"):
        LogAttentionMaps(num_images=0)


def test_media_config_draws_maps_in_the_app(tmp_path: Path) -> None:
    """``callbacks=media`` adds the callback; a one-epoch app run writes its grid in the run
    folder (the last epoch always draws) and sends it to TensorBoard."""
    from hydra.core.global_hydra import GlobalHydra
    from tensorboard.backend.event_processing import event_accumulator

    from app_helpers import compose_app
    from cass_lightning.apps.pretrain import pretrain

    try:
        cfg = compose_app(
            tmp_path,
            [
                "debug=tiny",
                "callbacks=media",
                "logger=tensorboard",
                "print_config=false",
                "rich_progress_bar=false",
                "trainer.enable_progress_bar=false",
            ],
        )
        assert cfg.callbacks.log_attention_maps.dirpath == str(tmp_path / "run" / "maps")
        pretrain(cfg)
    finally:
        GlobalHydra.instance().clear()
    assert [p.name for p in (tmp_path / "run" / "maps").iterdir()] == ["epoch_000.png"]
    (events,) = (tmp_path / "run").rglob("events.out.tfevents.*")
    accumulator = event_accumulator.EventAccumulator(str(events), size_guidance={"images": 0})
    assert "maps/attention" in accumulator.Reload().Tags()["images"]
