"""``data.augment_on=device``: the paper's augmentation on uint8 batches, same in distribution
as the loader's (flips, colour jitter, normalised statistics), each image drawn on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cass_lightning import CASSModule
from cass_lightning.data import SyntheticDataModule
from cass_lightning.data.transforms import (
    DeviceAugment,
    paper_train_transform,
    uint8_resize_transform,
)
from run_helpers import make_trainer

SIZE = 16
DRAWS = 400
COLOUR = (120, 80, 160)  # mid-range: a jittered value almost never equals it


def corner_image() -> Image.Image:
    """Grey, with a coloured top-left quadrant: where it lands tells the flips apart."""
    pixels = np.full((SIZE, SIZE, 3), 40, dtype=np.uint8)
    pixels[: SIZE // 2, : SIZE // 2] = COLOUR
    return Image.fromarray(pixels)


def classify(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
    """Fractions of vertically / horizontally flipped and colour-changed outputs."""
    pixels = ((images * std + mean) * 255).round()  # back to 0..255
    q = SIZE // 2
    centres = {(v, h): pixels[:, :, q // 2 + v * q, q // 2 + h * q] for v in (0, 1) for h in (0, 1)}
    # The quadrant holding the colour is the one farthest from the grey background.
    spread = torch.stack([(c - 40).abs().sum(1) for c in centres.values()], 1)
    where = spread.argmax(1)
    keys = list(centres)
    vflip = torch.tensor([keys[i][0] for i in where], dtype=torch.float)
    hflip = torch.tensor([keys[i][1] for i in where], dtype=torch.float)
    centre = torch.stack([centres[keys[i]][n] for n, i in enumerate(where)])
    jittered = (centre - torch.tensor(COLOUR)).abs().amax(1) > 0.5
    return {"vflip": vflip.mean().item(), "hflip": hflip.mean().item(),
            "jitter": jittered.float().mean().item()}  # fmt: skip


def test_device_augmentation_matches_the_loader_in_distribution():
    torch.manual_seed(0)
    image = corner_image()
    loader = paper_train_transform(SIZE)
    from_loader = torch.stack([loader(image) for _ in range(DRAWS)])
    batch = uint8_resize_transform(SIZE)(image).unsqueeze(0).repeat(DRAWS, 1, 1, 1)
    assert batch.dtype == torch.uint8
    augment = DeviceAugment()
    on_device = augment(batch)
    assert on_device.shape == from_loader.shape and on_device.dtype == torch.float32
    mean, std = augment.mean, augment.std
    got, want = classify(on_device, mean, std), classify(from_loader, mean, std)
    # Expected: flips 0.3 each, jitter 1 - 0.7 * 0.7 = 0.51 (3 binomial sigmas ~ 0.07 at 400
    # draws; a warp can move an edge pixel onto the probed one, so jitter reads a little high).
    for key, expected, tolerance in (("vflip", 0.3, 0.08), ("hflip", 0.3, 0.08),
                                     ("jitter", 0.51, 0.1)):  # fmt: skip
        assert got[key] == pytest.approx(expected, abs=tolerance), (key, got)
        assert want[key] == pytest.approx(expected, abs=tolerance), (key, want)
    assert on_device.mean().item() == pytest.approx(from_loader.mean().item(), abs=0.05)
    assert on_device.std().item() == pytest.approx(from_loader.std().item(), rel=0.05)
    # Per image, not once per batch: the batch holds both flipped and unflipped copies.
    assert 0 < got["hflip"] < 1 and 0 < got["vflip"] < 1


def test_device_augmentation_refuses_float_batches():
    with pytest.raises(ValueError, match="expects a uint8"):
        DeviceAugment()(torch.zeros(2, 3, 8, 8))


def test_the_datamodule_yields_uint8_and_augments_training_batches_after_the_transfer(
    tmp_path, tiny_kwargs
):
    dm = SyntheticDataModule(tmp_path, images_per_class=2, val_images_per_class=1, image_size=16,
                             img_size=16, batch_size=4, augment_on="device")  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
    out, same_labels = dm.transfer_batch_to_device([images, labels], torch.device("cpu"), 0)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 16, 16)
    assert torch.equal(same_labels, labels) and out.min() < 0  # normalised
    val = next(iter(dm.val_dataloader()))
    assert val[0].dtype == torch.float32
    assert (
        dm.transfer_batch_to_device(val, torch.device("cpu"), 0)[0] is val[0]
    )  # evaluation batches pass as they are
    # Lightning calls the hook: a model given uint8 images would fail in its first convolution.
    model = CASSModule(**{**tiny_kwargs, "img_size": 16})
    make_trainer(max_steps=1, limit_val_batches=0).fit(model, datamodule=dm)
    assert model.trainer.global_step == 1


def test_device_augmentation_is_refused_with_multi_view_pretraining(tmp_path):
    with pytest.raises(ValueError, match=r"train_views=dino .* use data\.augment_on=loader"):
        SyntheticDataModule(tmp_path, augment_on="device", train_views="dino")
    with pytest.raises(ValueError, match="augment_on"):
        SyntheticDataModule(tmp_path, augment_on="gpu")
