"""DINO's multi-crop views: a few large "global" crops and several small "local" crops per image.

DINO (the paper's baseline) learns by matching the teacher's output on the global crops with the
student's output on every other crop, so each training image must yield a list of views instead
of CASS's single augmented image. The views are built from lightly's ``DINOViewTransform`` (the
reference DINO augmentation: random resized crop, flip, colour jitter, grey scale, blur,
solarisation), so the augmentation is a kept implementation rather than a copy.

With the default collate a batch of ``(views, label)`` items arrives as
``[[global_1, global_2, local_1, ...], labels]``, each view a ``(B, C, H, W)`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightly.transforms.dino_transform import DINOViewTransform
from lightly.transforms.multi_view_transform import MultiViewTransform

from cass_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD

#: DINO's reference sizes: 224 px global crops and 96 px local crops.
REFERENCE_GLOBAL_SIZE = 224
REFERENCE_LOCAL_SIZE = 96
#: Below this a local crop holds too few pixels for blur and crop to mean anything.
MIN_LOCAL_SIZE = 8


def default_local_size(img_size: int) -> int:
    """Local crop side that keeps DINO's 96/224 ratio at ``img_size`` (at least 8 px)."""
    return max(MIN_LOCAL_SIZE, round(img_size * REFERENCE_LOCAL_SIZE / REFERENCE_GLOBAL_SIZE))


def _check_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    low, high = (float(s) for s in scale)
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
    return low, high


def dino_views(
    img_size: int,
    global_crops: int = 2,
    local_crops: int = 6,
    local_size: int | None = None,
    global_scale: Sequence[float] = (0.4, 1.0),
    local_scale: Sequence[float] = (0.05, 0.4),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> MultiViewTransform:
    """A callable mapping one PIL image to ``global_crops + local_crops`` normalised tensors.

    The first ``global_crops`` views are ``img_size`` square, the rest ``local_size`` square
    (default: :func:`default_local_size`). As in DINO's reference (and lightly's
    ``DINOTransform``), the first global crop is always blurred and never solarised, the second
    rarely blurred and sometimes solarised (further global crops alternate), and local crops are
    blurred half of the time. The teacher sees the global crops only, so DINO needs at least two
    views in all to have a cross-view pair.
    """
    for name, value, least in (("img_size", img_size, 1), ("global_crops", global_crops, 1),
                               ("local_crops", local_crops, 0)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if global_crops + local_crops < 2:
        raise ValueError("DINO compares different views: ask for at least two crops in all")
    local_size = default_local_size(img_size) if local_size is None else local_size
    if isinstance(local_size, bool) or not isinstance(local_size, int) or local_size < 1:
        raise ValueError(f"local_size must be a positive int, got {local_size!r}")
    normalize = {"mean": list(mean), "std": list(std)}
    global_scale = _check_scale("global_scale", global_scale)
    local_scale = _check_scale("local_scale", local_scale)
    # (blur probability, solarisation probability) of DINO's two global crops.
    global_kinds = ((1.0, 0.0), (0.1, 0.2))
    views = [
        DINOViewTransform(
            crop_size=img_size,
            crop_scale=global_scale,
            gaussian_blur=global_kinds[i % 2][0],
            solarization_prob=global_kinds[i % 2][1],
            normalize=normalize,
        )
        for i in range(global_crops)
    ]
    local = DINOViewTransform(
        crop_size=local_size,
        crop_scale=local_scale,
        gaussian_blur=0.5,
        solarization_prob=0.0,
        normalize=normalize,
    )
    views.extend([local] * local_crops)
    return MultiViewTransform(views)
