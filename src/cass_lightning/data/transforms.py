"""Image transforms: the CASS paper's training augmentation and a plain evaluation pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.transforms import v2

from cass_lightning.norms import IMAGENET_MEAN, IMAGENET_STD

#: Where the paper's training augmentation runs: in the loader workers (PIL, per image) or on
#: the training device on uint8 batches (``DeviceAugment``), with the loader only resizing.
AUGMENT_PLACES = ("loader", "device")


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


def uint8_resize_transform(img_size: int) -> T.Compose:
    """The loader's half of ``augment_on=device``: resize and keep uint8 (a quarter of the
    bytes of float32 to collate, pin and copy); :class:`DeviceAugment` does the rest."""
    _check_size(img_size)
    return T.Compose([T.Resize((img_size, img_size)), T.PILToTensor()])


class DeviceAugment(nn.Module):
    """The paper's augmentation after the resize (:func:`paper_train_transform`), on a uint8
    ``(B, C, H, W)`` batch already on the training device, then ``/255`` and normalised.

    Every random choice is drawn per image, as the loader path draws it: torchvision's v2
    transforms draw one set of parameters per call, so each image of the batch gets its own call
    (a loop over the batch: the same ops as the loader's, on the device, no hand-written kernel).
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        super().__init__()
        self.augment = v2.Compose(
            [
                v2.RandomApply(
                    [v2.ColorJitter(0.2, 0.2, 0.2), v2.RandomPerspective(distortion_scale=0.2)],
                    p=0.3,
                ),
                v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2), v2.RandomAffine(degrees=10)], p=0.3),
                v2.RandomVerticalFlip(0.3),
                v2.RandomHorizontalFlip(0.3),
            ]
        )
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"DeviceAugment expects a uint8 (B, C, H, W) batch, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if self.mean.device != images.device:  # once: the buffers then stay on that device
            self.to(images.device)
        out = torch.stack([self.augment(image) for image in images])
        return (out.float() / 255.0 - self.mean) / self.std
