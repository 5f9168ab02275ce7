"""Callbacks: export both backbones at the end of training, measure throughput, show samples."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor
from torchvision.utils import make_grid, save_image

from cass_lightning.export import export_backbones
from cass_lightning.modules.cass import batch_images


class ExportBackbones(L.Callback):
    """Writes ``cnn.safetensors``, ``vit.safetensors`` and ``meta.json`` when training ends.

    Runs only on a completed fit (not after an exception) and only on rank 0. The exported
    weights are those of the final model, the same state as ``last.ckpt``. A module with its own
    ``export(out_dir, source=...)`` (the DINO baseline: one arm) exports itself.
    """

    def __init__(self, dirpath: str | Path, source: str | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.source = source
        self.exported_to: Path | None = None

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        source = self.source or str(trainer.default_root_dir)
        export = getattr(pl_module, "export", None)
        if callable(export):
            self.exported_to = export(self.dirpath, source=source)
        else:
            self.exported_to = export_backbones(pl_module, self.dirpath, source=source)


class ImagesPerSecond(L.Callback):
    """Logs ``perf/images_per_s`` and ``perf/epoch_s`` per training epoch, and on CUDA the peak
    GPU memory of the epoch, ``perf/gpu_mem_peak_gib``.

    Counts the images this process trained on from the epoch's start to its last training batch,
    so the figure includes data loading, the optimiser step and logging (what a user waits for)
    but not the validation loop, which Lightning runs before ``on_train_epoch_end``.
    The peak memory counter is reset at each epoch start, so each value is that epoch's own.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._last_batch_end = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._images += int(batch_images(batch).shape[0])
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = max(self._last_batch_end - self._start, 1e-9)
        metrics = {"perf/images_per_s": self._images / elapsed, "perf/epoch_s": elapsed}
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device)
            metrics["perf/gpu_mem_peak_gib"] = peak / 2**30
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)


def denormalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``Normalize(mean, std)`` on ``(N, C, H, W)`` images and clamp to ``[0, 1]``."""
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(shape)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(shape)
    return (images * std_t + mean_t).clamp(0.0, 1.0)


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

    def _normalization(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[Sequence[float], Sequence[float]] | None:
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "mean", None) is not None and getattr(datamodule, "std", None):
            return datamodule.mean, datamodule.std
        hparams = getattr(pl_module, "hparams", {})
        if hparams.get("mean") is not None and hparams.get("std") is not None:
            return hparams["mean"], hparams["std"]
        return None

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._done = True
        images = torch.cat(self._collected)
        self._collected = []
        norm = self._normalization(trainer, pl_module)
        images = denormalize(images, *norm) if norm else images.clamp(0.0, 1.0)
        grid = image_grid(images, self.nrow)
        folder = self.dirpath or Path(trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        self.saved_to = folder / "augmented.png"
        save_image(grid, self.saved_to)
        caption = f"{images.shape[0]} augmented training images, step {trainer.global_step}"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
                logger.log_image(self.key, [pixels], step=trainer.global_step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.key, grid, trainer.global_step)


class OnlineEvaluation(L.Callback):
    """Is the representation improving? Measured during pretraining, without a separate job.

    - Online linear probe per arm: a linear layer on the detached pooled features of each
      training batch, trained with its own Adam on the labelled rows only (the datamodule marks
      the others -1), evaluated on the validation batches (``probe/<arm>_val_acc``).
    - Weighted kNN per arm every ``every_n_epochs`` (and at the last epoch): the labelled
      training images (eval transform) are the bank, the validation split the queries, features
      in fp32 (``knn/<arm>_val_acc``).

    Needs a datamodule with single-label classes and a validation split (a ``MedicalDataModule``);
    otherwise it says so once and does nothing. Probes are diagnostics: not checkpointed.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        k: int = 20,
        temperature: float = 0.07,
        probe_lr: float = 1e-3,
        arms: Sequence[str] = ("cnn", "vit"),
    ) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.k, self.temperature, self.probe_lr = k, temperature, probe_lr
        self.arms = tuple(arms)
        self.probes: dict[str, Any] = {}
        self._correct: dict[str, int] = {}
        self._seen = 0
        self.enabled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from cass_lightning.evaluation import LinearProbe

        dm = trainer.datamodule
        usable = (
            stage == "fit"
            and dm is not None
            and hasattr(dm, "labelled_eval_dataloader")
            and hasattr(pl_module, "pooled")
        )
        if usable:
            dm.setup(stage)
            usable = not dm.multi_label and len(dm.split_indices("val")) > 0
        if not usable:
            rank_zero_only(print)(
                "online evaluation off: it needs a single-label MedicalDataModule with a "
                "validation split and a CASSModule"
            )
            return
        self.enabled = True
        for arm in self.arms:
            features = int(getattr(pl_module, arm).num_features)
            probe = LinearProbe(features, dm.num_classes, lr=self.probe_lr)
            self.probes[arm] = probe.to(pl_module.device)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if not self.enabled:
            return
        labels = batch[1].to(pl_module.device)
        for arm, probe in self.probes.items():
            probe.to(pl_module.device)
            loss, accuracy = probe.step(pl_module.pooled[arm], labels)
            if not math.isnan(loss):
                pl_module.log_dict(
                    {f"probe/{arm}_train_loss": loss, f"probe/{arm}_train_acc": accuracy},
                    on_step=False,
                    on_epoch=True,
                )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._correct = dict.fromkeys(self.probes, 0)
        self._seen = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        labels = batch[1].to(pl_module.device)
        for arm, probe in self.probes.items():
            predicted = probe.predict(pl_module.pooled[arm])
            self._correct[arm] += int((predicted == labels).sum())
        self._seen += int(labels.shape[0])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not self._seen:
            return
        metrics = {f"probe/{arm}_val_acc": self._correct[arm] / self._seen for arm in self.probes}
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 or epoch >= (trainer.max_epochs or epoch):
            metrics.update(self.knn(trainer, pl_module))
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def knn(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from cass_lightning.evaluation import extract_features, knn_accuracy

        dm = trainer.datamodule
        results = {}
        for arm in self.probes:
            backbone = getattr(pl_module, arm)
            bank, bank_labels = extract_features(
                backbone, dm.labelled_eval_dataloader(), pl_module.device
            )
            queries, labels = extract_features(backbone, dm.val_dataloader(), pl_module.device)
            results[f"knn/{arm}_val_acc"] = knn_accuracy(
                bank, bank_labels, queries, labels, dm.num_classes, self.k, self.temperature
            )
        return results


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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from cass_lightning.maps import require_gradcam

        require_gradcam()

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.images is not None or dataloader_idx != 0 or not trainer.is_global_zero:
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
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self.images is None and self._collected:  # a validation set smaller than asked for
            self._freeze_images()
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs > 0
        if self.images is None or not (epoch % self.every_n_epochs == 0 or last):
            return
        self._emit(trainer, pl_module)

    def _normalization(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> tuple[Sequence[float] | None, Sequence[float] | None]:
        """The given ``mean``/``std``, else the datamodule's, else the model's, else none."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "mean", None) is not None and getattr(datamodule, "std", None):
            return datamodule.mean, datamodule.std
        hparams = getattr(pl_module, "hparams", {})
        return hparams.get("mean"), hparams.get("std")

    def _emit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import copy

        from cass_lightning.maps import cnn_gradcam, overlay_grid, vit_attention_map

        assert self.images is not None
        maps = []
        with torch.inference_mode(False), torch.autocast(pl_module.device.type, enabled=False):
            for arm, draw in (("vit", vit_attention_map), ("cnn", cnn_gradcam)):
                model = getattr(pl_module, arm)
                if next(model.parameters()).dtype != torch.float32:  # a true-half run
                    model = copy.deepcopy(model).float()
                maps.append(draw(model, self.images.to(pl_module.device)))
        pixels = overlay_grid(self.images, maps, *self._normalization(trainer, pl_module))
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
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(self.key, [pixels], step=trainer.global_step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.key, grid, trainer.global_step)


class CollapseMonitor(L.Callback):
    """Warns once (with the epoch and the numbers) when CASS shows collapse, or stops the run.

    Collapse here: the two arms agree on one direction for every image. Read at each training
    epoch end from what :class:`CASSModule` logs: the mean cosine between the arms
    (``train/cosine_epoch``) above ``cosine_threshold`` AND an arm's spread of normalised
    outputs below ``spread_threshold`` times a well-spread value (``1/sqrt(dim)``). Thresholds:
    on real images from random init the cosine reached 0.998 by epoch 2 and the relative
    spread fell to ~0.3 (CNN) and ~0.03 (ViT); healthy runs stay near 1. ``stop=True`` ends the
    run at that epoch (checkpoints and export as usual).
    """

    def __init__(
        self, cosine_threshold: float = 0.99, spread_threshold: float = 0.1, stop: bool = False
    ) -> None:
        self.cosine_threshold = cosine_threshold
        self.spread_threshold = spread_threshold
        self.stop = stop
        self.collapsed_at: int | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        needed = ("train/cosine_epoch", "train/cnn_std_epoch", "train/vit_std_epoch")
        if self.collapsed_at is not None or not all(k in metrics for k in needed):
            return
        dim = int(getattr(pl_module.hparams, "head_dim", 0) or 0)
        if getattr(pl_module.hparams, "head", "logits") == "features":
            dim = int(pl_module.cnn.num_features)
        if dim < 1:
            return
        cosine = float(metrics["train/cosine_epoch"])
        spread = {
            arm: float(metrics[f"train/{arm}_std_epoch"]) * math.sqrt(dim) for arm in ("cnn", "vit")
        }
        low = [arm for arm, value in spread.items() if value < self.spread_threshold]
        if cosine < self.cosine_threshold or not low:
            return
        self.collapsed_at = trainer.current_epoch
        message = (
            f"CASS collapse at epoch {trainer.current_epoch}: mean cosine between the arms "
            f"{cosine:.4f} (threshold {self.cosine_threshold}), spread of normalised outputs "
            f"relative to 1/sqrt({dim}): cnn {spread['cnn']:.3f}, vit {spread['vit']:.3f} "
            f"(threshold {self.spread_threshold}). Every image is mapped to nearly one "
            "direction; see the README on collapse (start from pretrained weights)."
        )
        rank_zero_warn(message)
        pl_module.log("collapse/epoch", float(trainer.current_epoch), on_epoch=True)
        if self.stop:
            trainer.should_stop = True
