"""timm encoders: heads, widths, offline weights and the fast offline failure."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from cass_lightning import encoders
from cass_lightning.encoders import HubUnreachableError, build_encoder, create_timm_model


def test_logits_head_has_configurable_width():
    backbone, head = build_encoder("resnet10t", head="logits", head_dim=37)
    out = head(backbone(torch.randn(2, 3, 32, 32)))
    assert out.shape == (2, 37)
    assert isinstance(head, torch.nn.Identity)


def test_logits_default_is_the_imagenet_width():
    backbone, _ = build_encoder("resnet10t")
    assert backbone.num_classes == 1000


def test_projector_head_maps_features_to_shared_width():
    backbone, head = build_encoder(
        "resnet10t", head="projector", head_dim=24, projector_hidden_dim=48
    )
    assert backbone.num_classes == 0
    head.eval()
    assert head(backbone(torch.randn(2, 3, 32, 32))).shape == (2, 24)


def test_features_head_returns_pooled_features():
    backbone, head = build_encoder("vit_tiny_patch16_224", head="features", img_size=32)
    assert head(backbone(torch.randn(2, 3, 32, 32))).shape == (2, backbone.num_features)


def test_unknown_head_and_model_are_clear_errors():
    with pytest.raises(ValueError, match="head must be one of"):
        build_encoder("resnet10t", head="mlp")
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet_nope'"):
        build_encoder("resnet_nope")


def test_img_size_and_in_chans_pass_through():
    vit, _ = build_encoder("vit_tiny_patch16_224", img_size=48, in_chans=1, head_dim=5)
    assert vit.patch_embed.img_size == (48, 48)
    assert vit(torch.randn(1, 1, 48, 48)).shape == (1, 5)
    cnn, _ = build_encoder("resnet10t", img_size=48, in_chans=1, head_dim=5)  # CNN ignores size
    assert cnn(torch.randn(1, 1, 48, 48)).shape == (1, 5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_round_trip(tmp_path, suffix):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = create_timm_model("resnet10t", weights_file=path, num_classes=1000)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_weights_file_with_new_head_keeps_the_trunk(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone, _ = build_encoder("resnet10t", weights_file=path, head_dim=7)
    torch.testing.assert_close(backbone.conv1[0].weight, source.conv1[0].weight)
    assert backbone.fc.out_features == 7


def test_vit_weights_file_resizes_position_embedding(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    vit = create_timm_model("vit_tiny_patch16_224", weights_file=path, img_size=64)
    assert vit.pos_embed.shape[1] == 1 + (64 // 16) ** 2
    torch.testing.assert_close(vit.cls_token, source.cls_token)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        create_timm_model("resnet10t", weights_file=missing)


def test_weights_file_with_unknown_suffix(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("not weights")
    with pytest.raises(ValueError, match="suffix"):
        create_timm_model("resnet10t", weights_file=path)


@pytest.mark.timeout(60)
def test_pretrained_without_hub_fails_fast_naming_weights_file(monkeypatch):
    # A closed local port stands in for a machine with no network (timm alone retries ~45 s).
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert encoders._hub_reachable(timeout_s=1.0) is False
    with pytest.raises(HubUnreachableError, match="weights_file"):
        build_encoder("resnet10t", pretrained=True)
