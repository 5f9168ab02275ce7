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


# --- every weights load is strict for the backbone (only the classifier may be adapted)
def _save(model: torch.nn.Module, path, rename=lambda k: k, drop=()) -> None:
    state = {rename(k): v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("head", [("logits", 7), ("projector", 16)])
def test_a_file_with_prefixed_keys_is_refused_not_ignored(tmp_path, head):
    """Every key under 'backbone.': timm's loose load loaded nothing and went on silently."""
    path = tmp_path / "prefixed.safetensors"
    _save(timm.create_model("resnet10t"), path, rename=lambda k: f"backbone.{k}")
    with pytest.raises(encoders.WeightsMismatchError) as err:
        build_encoder("resnet10t", weights_file=path, head=head[0], head_dim=head[1])
    message = str(err.value)
    assert "prefixed.safetensors" in message and "missing" in message
    assert "not in the model (backbone." in message and "prefix 'backbone.'" in message


def test_another_architectures_file_is_refused(tmp_path):
    path = tmp_path / "vit.safetensors"
    _save(timm.create_model("vit_tiny_patch16_224"), path)
    with pytest.raises(
        encoders.WeightsMismatchError, match=r"152 tensors are not in the model \(blocks"
    ):
        build_encoder("resnet10t", weights_file=path, head_dim=7)
    small = tmp_path / "vit_small.pth"
    _save(timm.create_model("vit_small_patch16_224"), small)
    with pytest.raises(encoders.WeightsMismatchError, match=r"another shape \(cls_token \(file"):
        build_encoder("vit_tiny_patch16_224", weights_file=small, img_size=32, head_dim=7)


def test_a_fitting_file_loads_every_backbone_tensor_and_says_what_it_adapted(tmp_path):
    import hashlib

    source = timm.create_model("resnet10t")
    path = tmp_path / "r.safetensors"
    _save(source, path)
    backbone, _ = build_encoder("resnet10t", weights_file=path, head_dim=7)
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(backbone.state_dict()[key], value)
    record = encoders.record_of(backbone)
    assert record["init"] == "file" and record["file"] == str(path.resolve())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["keys_loaded"] == len(source.state_dict()) - 2
    assert record["keys_fresh"] == ["fc.weight", "fc.bias"]
    assert set(record["keys_adapted"]) == {"fc.weight", "fc.bias"}
    assert "(1000, 512)" in record["keys_adapted"]["fc.weight"]
    # The projector head: the model has no classifier, the file's is not loaded.
    projected, _ = build_encoder("resnet10t", weights_file=path, head="projector", head_dim=8)
    record = encoders.record_of(projected)
    assert record["keys_fresh"] == [] and "no classifier" in record["keys_adapted"]["fc.weight"]
    # Same width: the classifier is loaded too, nothing adapted.
    same, _ = build_encoder("resnet10t", weights_file=path)
    assert encoders.record_of(same)["keys_adapted"] == {}
    torch.testing.assert_close(same.fc.weight, source.fc.weight)
    assert encoders.record_of(build_encoder("resnet10t")[0]) == {"init": "random"}


def test_first_conv_adapts_to_other_input_channels(tmp_path):
    source = timm.create_model("resnet10t")
    path = tmp_path / "r.safetensors"
    _save(source, path)
    gray, _ = build_encoder("resnet10t", weights_file=path, in_chans=1, head_dim=3)
    torch.testing.assert_close(gray.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True))
    assert encoders.record_of(gray)["keys_adapted"]["conv1.0.weight"] == "input channels 3 -> 1"
    torch.testing.assert_close(gray.conv1[1].weight, source.conv1[1].weight)


def test_vit_position_embedding_is_resampled_and_recorded(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224")
    path = tmp_path / "vit.safetensors"
    _save(source, path)
    vit, _ = build_encoder("vit_tiny_patch16_224", weights_file=path, img_size=32, head_dim=5)
    assert vit.pos_embed.shape == (1, 1 + 4, 192)
    torch.testing.assert_close(vit.pos_embed[:, :1], source.pos_embed[:, :1])  # class token's
    adapted = encoders.record_of(vit)["keys_adapted"]
    assert adapted["pos_embed"] == "resampled from a 14x14 to a 2x2 patch grid"
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_missing_batchnorm_counters_are_allowed_other_missing_keys_are_not(tmp_path):
    source = timm.create_model("resnet10t")
    counters = [k for k in source.state_dict() if k.endswith("num_batches_tracked")]
    path = tmp_path / "no_counters.safetensors"
    _save(source, path, drop=counters)
    build_encoder("resnet10t", weights_file=path)
    partial = tmp_path / "partial.safetensors"
    _save(source, partial, drop=["layer4.0.conv1.weight"])
    with pytest.raises(encoders.WeightsMismatchError, match=r"1 of the model's tensors are "
                       r"missing \(layer4\.0\.conv1\.weight\)"):  # fmt: skip
        build_encoder("resnet10t", weights_file=partial)


def test_a_pth_weights_file_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "marker"

    class Hostile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "w.pth"
    torch.save({"conv1.0.weight": torch.zeros(1), "x": Hostile()}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=r"w\.pth cannot be loaded .*code") as err:
        build_encoder("resnet10t", weights_file=path)
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(encoders.WeightsMismatchError, match=r"bad\.safetensors is not a readable"):
        build_encoder("resnet10t", weights_file=bad)


def test_an_img_size_the_vit_patches_do_not_tile_is_refused():
    with pytest.raises(ValueError, match=r"img_size=33 .* patch size 16.* img_size=32 or 48"):
        build_encoder("vit_tiny_patch16_224", img_size=33)
    with pytest.raises(ValueError, match=r"img_size=8 .* img_size=16 \("):
        build_encoder("vit_tiny_patch16_224", img_size=8)
    build_encoder("resnet10t", img_size=33)  # a CNN takes any size
