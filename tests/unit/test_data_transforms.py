"""The training augmentation must match the CASS paper exactly; eval must be deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from cass_lightning.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    paper_train_transform,
)


def _rgb_image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _assert_jitter(jitter: object) -> None:
    assert isinstance(jitter, T.ColorJitter)
    assert jitter.brightness == pytest.approx((0.8, 1.2))
    assert jitter.contrast == pytest.approx((0.8, 1.2))
    assert jitter.saturation == pytest.approx((0.8, 1.2))
    assert jitter.hue is None


def test_imagenet_statistics() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_train_transform_matches_paper_structure() -> None:
    steps = paper_train_transform(64).transforms
    assert [type(step) for step in steps] == [
        T.Resize,
        T.RandomApply,
        T.RandomApply,
        T.RandomVerticalFlip,
        T.RandomHorizontalFlip,
        T.ToTensor,
        T.Normalize,
    ]
    resize, perspective_block, affine_block, vflip, hflip, _, normalize = steps
    assert tuple(resize.size) == (64, 64)

    assert perspective_block.p == pytest.approx(0.3)
    jitter, perspective = perspective_block.transforms
    _assert_jitter(jitter)
    assert isinstance(perspective, T.RandomPerspective)
    assert perspective.distortion_scale == pytest.approx(0.2)
    assert perspective.p == pytest.approx(0.5)  # torchvision's default, as in the paper

    assert affine_block.p == pytest.approx(0.3)
    jitter, affine = affine_block.transforms
    _assert_jitter(jitter)
    assert isinstance(affine, T.RandomAffine)
    assert list(affine.degrees) == pytest.approx([-10.0, 10.0])
    assert affine.translate is None
    assert affine.scale is None
    assert affine.shear is None

    assert vflip.p == pytest.approx(0.3)
    assert hflip.p == pytest.approx(0.3)
    assert tuple(normalize.mean) == IMAGENET_MEAN
    assert tuple(normalize.std) == IMAGENET_STD


def test_train_transform_uses_given_statistics() -> None:
    normalize = paper_train_transform(32, mean=(0.5, 0.5, 0.5), std=(0.1, 0.2, 0.3)).transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5)
    assert tuple(normalize.std) == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("source_mode", ["RGB", "L"])
def test_train_transform_output_shape_and_dtype(source_mode: str) -> None:
    image = _rgb_image().convert(source_mode).convert("RGB")
    out = paper_train_transform(24)(image)
    assert out.shape == (3, 24, 24)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_train_transform_is_random_but_seedable() -> None:
    transform = paper_train_transform(24)
    image = _rgb_image()
    torch.manual_seed(3)
    first = transform(image)
    torch.manual_seed(3)
    assert torch.equal(first, transform(image))
    outputs = [transform(image) for _ in range(20)]
    assert any(not torch.equal(first, other) for other in outputs)


def test_eval_transform_is_deterministic() -> None:
    transform = eval_transform(20, IMAGENET_MEAN, IMAGENET_STD)
    assert [type(step) for step in transform.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    image = _rgb_image(seed=1)
    outputs = [transform(image) for _ in range(5)]
    assert outputs[0].shape == (3, 20, 20)
    assert outputs[0].dtype == torch.float32
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


def test_eval_transform_normalises_with_given_statistics() -> None:
    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    out = eval_transform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(grey)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.5), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_image_size_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="img_size"):
        paper_train_transform(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="img_size"):
        eval_transform(bad)  # type: ignore[arg-type]
