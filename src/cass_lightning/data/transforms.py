"""Image transforms: the CASS paper's training augmentation and a plain evaluation pipeline."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

from cass_lightning.norms import IMAGENET_MEAN, IMAGENET_STD


def _check_size(img_size: int) -> None:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")


def paper_train_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """The augmentation used by the CASS paper, step for step.

    Both the CNN and the ViT see the same augmented view, so this is the only source of
    stochasticity between epochs. Mild photometric/geometric changes keep medical content
    intact. Expects a PIL image already converted to RGB.
    """
    _check_size(img_size)
    return T.Compose(
        [
            T.Resize((img_size, img_size)),
            T.RandomApply(
                [T.ColorJitter(0.2, 0.2, 0.2), T.RandomPerspective(distortion_scale=0.2)], p=0.3
            ),
            T.RandomApply([T.ColorJitter(0.2, 0.2, 0.2), T.RandomAffine(degrees=10)], p=0.3),
            T.RandomVerticalFlip(0.3),
            T.RandomHorizontalFlip(0.3),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(
    img_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Deterministic resize + normalise, so validation numbers are comparable across epochs."""
    _check_size(img_size)
    return T.Compose([T.Resize((img_size, img_size)), T.ToTensor(), T.Normalize(mean, std)])
