"""Pictures of a run: the augmented images the arms train on, and where each arm looks."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image

from cass_lightning.batches import batch_images
from cass_lightning.maps import (
    cnn_gradcam,
    denormalize,
    overlay_grid,
    require_gradcam,
    vit_attention_map,
)


def display_normalization(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Sequence[float], Sequence[float]] | None:
    """The normalisation to undo for display: the given ``mean``/``std``, else the datamodule's,
    else the model's hyperparameters', else ``None`` (show the tensors as they are)."""
    if mean is not None and std is not None:
        return mean, std
    datamodule = getattr(trainer, "datamodule", None)
    if getattr(datamodule, "mean", None) is not None and getattr(datamodule, "std", None):
        return datamodule.mean, datamodule.std
    hparams = getattr(pl_module, "hparams", {})
    if hparams.get("mean") is not None and hparams.get("std") is not None:
        return hparams["mean"], hparams["std"]
    return None


def send_image(trainer: L.Trainer, key: str, grid: Tensor, caption: str) -> None:
    """A ``(3, H, W)`` grid in ``[0, 1]`` to every logger that shows images (wandb, TensorBoard)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            logger.log_image(key, [pixels], step=trainer.global_step, caption=[caption])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, trainer.global_step)


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """A ``(3, H, W)`` grid of ``[0, 1]`` images, ``nrow`` per row (default: about square).

    One- and three-channel images are shown as they are; other channel counts by their first.
    """
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    return make_grid(images, nrow=nrow, padding=padding)


class LogAugmentedSamples(L.Callback):
    """Shows what the arms are trained on: a grid of the first ``num_images`` augmented training
    images, de-normalised, once at the start of training.

    The grid is saved as ``<dirpath>/augmented.png`` (visible without any service) and sent to
    the loggers that take images (wandb: ``log_image``; TensorBoard: ``add_image``). It uses
    the batches the model trains on, so it draws nothing extra from the loader and leaves the
    random augmentation stream, hence the run, unchanged.

    Args:
        num_images: images in the grid (collected over the first batches if one is smaller).
        dirpath: folder of the PNG; default ``<trainer.default_root_dir>/samples``.
        nrow: images per grid row; default about square.
        mean, std: the normalisation to undo; default the datamodule's ``mean``/``std``, else the
            model's ``hparams``, else none (images shown as they are, clamped to ``[0, 1]``).
        key: the name under which the loggers show the grid.
    """

    def __init__(
        self,
        num_images: int = 8,
        dirpath: str | Path | None = None,
        nrow: int | None = 4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        key: str = "samples/augmented",
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        self.num_images = num_images
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.nrow = nrow
        self.mean, self.std = mean, std
        self.key = key
        self.saved_to: Path | None = None
        self._collected: list[Tensor] = []
        self._done = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._collected, self._done = [], not trainer.is_global_zero

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._done:
            return
        have = sum(t.shape[0] for t in self._collected)
        images = batch_images(batch)[: self.num_images - have]
        self._collected.append(images.detach().float().cpu())
        if have + images.shape[0] >= self.num_images:
            self._emit(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._done and self._collected:  # an epoch with fewer images than asked for
            self._emit(trainer, pl_module)

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done = True
        images = torch.cat(self._collected)
        self._collected = []
        norm = display_normalization(trainer, pl_module, self.mean, self.std)
        images = denormalize(images, *norm) if norm else images.clamp(0.0, 1.0)
        grid = image_grid(images, self.nrow)
        folder = self.dirpath or Path(trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        self.saved_to = folder / "augmented.png"
        save_image(grid, self.saved_to)
        caption = f"{images.shape[0]} augmented training images, step {trainer.global_step}"
        send_image(trainer, self.key, grid, caption)


class LogAttentionMaps(L.Callback):
    """Where do the arms look? A grid of fixed validation images with, per image, the ViT's
    last-block CLS attention and the CNN's Grad-CAM (see :mod:`cass_lightning.maps`).

    The images are the first ``num_images`` of the validation loader, taken from the batches the
    model validates on (the sanity check's included) and kept for the whole run, so the grids of
    successive epochs are directly comparable and nothing extra is drawn from the loader. After
    validation in each epoch whose number (counting from 1) is a multiple of ``every_n_epochs``,
    and in the ``max_epochs``-th, both maps are computed in fp32 with autocast off and the model
    in eval mode (its train mode, ``requires_grad`` flags and gradients are restored), the grid
    is saved as ``<dirpath>/epoch_XXX.png`` (``XXX``: Lightning's 0-based ``current_epoch``)
    and sent to the loggers that take images (wandb: ``log_image``; TensorBoard:
    ``add_image``). Rank 0 only.

    Args:
        num_images: images in the grid (collected over the first batches if one is smaller).
        every_n_epochs: draw in every n-th epoch (if it validates), and in the last epoch.
        dirpath: folder of the PNGs; default ``<trainer.default_root_dir>/maps``.
        mean, std: the normalisation to undo for display; default as ``LogAugmentedSamples``.
        key: the name under which the loggers show the grid.
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 5,
        dirpath: str | Path | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        key: str = "maps/attention",
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        self.num_images = num_images
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.mean, self.std = mean, std
        self.key = key
        self.images: Tensor | None = None
        self.saved: list[Path] = []
        self._collected: list[Tensor] = []
        self.enabled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_gradcam()
        arms = pl_module.trained_arms() if hasattr(pl_module, "trained_arms") else ()
        if set(arms) != {"cnn", "vit"}:
            self.enabled = False
            rank_zero_only(print)(
                f"attention maps off: they draw the ViT's and the CNN's side by side, and "
                f"{type(pl_module).__name__} trains {', '.join(arms) or 'neither'}"
            )

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (not self.enabled or self.images is not None or dataloader_idx != 0
                or not trainer.is_global_zero):  # fmt: skip
            return
        have = sum(t.shape[0] for t in self._collected)
        # Validation runs under inference mode; a clone made outside it is an ordinary tensor
        # that Grad-CAM can later differentiate through.
        with torch.inference_mode(False):
            images = batch_images(batch)[: self.num_images - have].detach().float().cpu().clone()
        self._collected.append(images)
        if have + images.shape[0] >= self.num_images:
            self._freeze_images()

    def _freeze_images(self) -> None:
        with torch.inference_mode(False):
            self.images = torch.cat(self._collected).clone()
        self._collected = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.images is None and self._collected:  # a validation set smaller than asked for
            self._freeze_images()
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs > 0
        if self.images is None or not (epoch % self.every_n_epochs == 0 or last):
            return
        self._emit(trainer, pl_module)

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.images is not None
        maps = []
        with torch.inference_mode(False), torch.autocast(pl_module.device.type, enabled=False):
            for arm, draw in (("vit", vit_attention_map), ("cnn", cnn_gradcam)):
                model = pl_module.arm_backbone(arm)
                if next(model.parameters()).dtype != torch.float32:  # a true-half run
                    model = copy.deepcopy(model).float()
                maps.append(draw(model, self.images.to(pl_module.device)))
        norm = display_normalization(trainer, pl_module, self.mean, self.std)
        pixels = overlay_grid(self.images, maps, *(norm or (None, None)))
        folder = self.dirpath or Path(trainer.default_root_dir) / "maps"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{trainer.current_epoch:03d}.png"
        grid = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
        save_image(grid, path)
        self.saved.append(path)
        caption = (
            f"epoch {trainer.current_epoch}: image | ViT CLS attention | CNN Grad-CAM, "
            f"{self.images.shape[0]} validation images"
        )
        send_image(trainer, self.key, grid, caption)
