"""``study.weights.<arm>=hub``: timm's default hub weights, found in a local Hugging Face cache
the test prepares (no network), loaded strictly and recorded like any weights file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file, save_file

from app_helpers import compose_app
from cass_lightning.apps.study.app import settings_from
from cass_lightning.apps.study.plan import build_plan, missing_rows, statuses_of, write_plan
from cass_lightning.encoders import HubUnreachableError, create_timm_model, hub_weights_file
from cass_lightning.io import file_sha256
from cass_lightning.weights import record_of

CNN, VIT = "resnet10t", "vit_tiny_patch16_224"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def cache_model(cache: Path, name: str) -> Path:
    """Put ``name``'s state dict where huggingface_hub keeps its default pretrained tag's
    ``model.safetensors``: a blob, the snapshot's link to it, and ``refs/main``."""
    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    blob = repo / "blobs" / ("0" * 64)
    blob.parent.mkdir(parents=True)
    save_file(timm.create_model(name, pretrained=False).state_dict(), str(blob))
    snapshot = repo / "snapshots" / REVISION / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache in tmp_path (huggingface_hub read its environment at
    import, so its constants are pointed there too)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_weights_come_from_the_cache_and_load_strictly_with_their_sha256(hf_cache):
    snapshot = cache_model(hf_cache, CNN)
    found = hub_weights_file(CNN)
    assert found.file == snapshot and found.hub_id == "timm/resnet10t.c3_in1k"
    model = create_timm_model(CNN, weights_file=found.file, num_classes=3)
    record = record_of(model)
    # the snapshot's name (its suffix says safetensors), not the blob it links to
    assert record["file"] == str(snapshot) and record["sha256"] == file_sha256(snapshot)
    assert record["keys_fresh"] == ["fc.weight", "fc.bias"]  # only the classifier is new
    assert model.conv1[0].weight.equal(load_file(str(snapshot))["conv1.0.weight"])


def test_a_model_missing_from_the_offline_cache_is_refused_by_name(hf_cache):
    with pytest.raises(HubUnreachableError) as err:
        hub_weights_file(VIT)
    message = str(err.value)
    assert "vit_tiny_patch16_224's ImageNet weights" in message
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in message
    assert str(hf_cache) in message and "weights file" in message


def test_study_hub_weights_start_cass_dino_and_the_imagenet_rows(tmp_path, hf_cache):
    files = {"cnn": cache_model(hf_cache, CNN), "vit": cache_model(hf_cache, VIT)}
    cfg = compose_app(tmp_path, ["study=smoke", "study.weights.cnn=hub", "study.weights.vit=hub"],
                      config_name="study")  # fmt: skip
    study_dir = tmp_path / "study"
    settings = settings_from(cfg, [], study_dir)
    assert settings.weights == {arm: str(f) for arm, f in files.items()}
    for arm, file in files.items():
        source = settings.weights_sources[arm]
        assert source["file"] == str(file) and source["sha256"] == file_sha256(file)
        assert source["hub"] == timm.models.get_pretrained_cfg(settings.encoders[arm]).hf_hub_id
    points = build_plan(settings, study_dir)
    assert not missing_rows(settings)
    for p in points:
        if p.app == "pretrain":  # CASS and DINO start from the hub files
            assert "model.pretrained=true" in p.overrides
            assert f"model.cnn_weights_file={files['cnn']}" in p.overrides
            assert f"model.vit_weights_file={files['vit']}" in p.overrides
    imagenet = [p for p in points if p.method == "imagenet"]
    assert {p.arm for p in imagenet} == {"cnn", "vit"}
    for p in imagenet:
        assert "weights=imagenet" in p.overrides
        assert f"model.weights_file={files[p.arm]}" in p.overrides
    write_plan(study_dir, settings, points, statuses_of(points, study_dir))
    plan = json.loads((study_dir / "plan.json").read_text())
    assert plan["settings"]["weights_sources"]["vit"]["sha256"] == file_sha256(files["vit"])
    # the ViT file at the study's 64 px: loaded strictly, its position embedding resampled
    vit = create_timm_model(VIT, weights_file=files["vit"], img_size=64, num_classes=2)
    assert record_of(vit)["sha256"] == file_sha256(files["vit"])
    assert "pos_embed" in record_of(vit)["keys_adapted"]


def test_study_hub_refuses_before_anything_when_an_arm_is_not_cached(tmp_path, hf_cache):
    from cass_lightning.apps.study.app import study

    cache_model(hf_cache, CNN)
    overrides = ["study=smoke", "study.weights.cnn=hub", "study.weights.vit=hub"]
    cfg = compose_app(tmp_path, overrides, config_name="study")
    with pytest.raises(HubUnreachableError, match=r"^study\.weights\.vit=hub: "
                       r"vit_tiny_patch16_224's ImageNet weights .* not in the local Hugging "
                       r"Face cache"):  # fmt: skip
        study(cfg, overrides, [])
    assert not Path(str(cfg.study.dir)).exists()  # no plan, no point, no data check
