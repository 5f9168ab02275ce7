"""Monitors that read a run as it goes: training throughput, and CASS's collapse signals."""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from cass_lightning.batches import batch_images


def reset_peak_rss() -> bool:
    """Linux: set the process's peak resident memory back to its current value (``clear_refs``
    5), so a later :func:`peak_rss_gib` is this run's own; ``False`` where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_gib() -> float:
    """The process's peak resident memory in GiB: ``VmHWM`` on Linux, else ``ru_maxrss`` (the
    peak since the process started; KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    scale = 2**30 if sys.platform == "darwin" else 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class ImagesPerSecond(L.Callback):
    """Logs ``perf/images_per_s`` and ``perf/epoch_s`` per training epoch, and on CUDA the peak
    GPU memory of the epoch, ``perf/gpu_mem_peak_gib``; keeps the run's totals for its summary.

    Counts the images this process trained on from the epoch's start to its last training batch,
    so the figure includes data loading, the optimiser step and logging (what a user waits for)
    but not the validation loop, which Lightning runs before ``on_train_epoch_end``.
    The GPU peak is reset at each epoch start, so each logged value is that epoch's own;
    ``peak_memory_gib`` is the run's peak (GPU memory, or the process's resident memory on CPU,
    as ``memory_kind`` says). On Linux the resident peak is reset when training starts, so a
    run that shares its process with earlier runs (the study's worker) reports its own.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self._last_batch_end = 0.0
        self._images = 0
        self.total_images = 0
        self.total_seconds = 0.0
        self.peak_memory_gib: float | None = None
        self.memory_kind: str | None = None
        self._cpu_kind = "cpu_rss_process"  # until training starts and resets the peak

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Where the peak cannot be reset, it is the process's since it started: said so.
        self._cpu_kind = "cpu_rss" if reset_peak_rss() else "cpu_rss_process"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._start = self._last_batch_end = time.perf_counter()
        self._images = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._images += int(batch_images(batch).shape[0])
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = max(self._last_batch_end - self._start, 1e-9)
        self.total_images += self._images
        self.total_seconds += elapsed
        metrics = {"perf/images_per_s": self._images / elapsed, "perf/epoch_s": elapsed}
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            metrics["perf/gpu_mem_peak_gib"] = peak
            self.memory_kind = "gpu"
        else:
            peak = peak_rss_gib()
            self.memory_kind = self._cpu_kind
        self.peak_memory_gib = max(peak, self.peak_memory_gib or 0.0)
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def mean_images_per_s(self) -> float | None:
        """Images trained per second over every epoch of this process (``None`` before one)."""
        return self.total_images / self.total_seconds if self.total_seconds > 0 else None


class LoopTimer(L.Callback):
    """Seconds spent inside the training loop (validation included) and the test loop, so a
    caller can tell the time the work took from the time around it (set-up, imports, I/O)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._since: float | None = None

    def _start(self, *args: Any) -> None:
        self._since = time.perf_counter()

    def _stop(self, *args: Any) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    on_train_start = on_test_start = _start
    on_train_end = on_test_end = _stop


class CollapseMonitor(L.Callback):
    """Warns once (with the epoch and the numbers) when CASS shows collapse, or stops the run.

    Collapse here: the two arms agree on one direction for every image. Read at each training
    epoch end from what :class:`CASSModule` logs: the mean cosine between the arms
    (``train/cosine_epoch``) above ``cosine_threshold`` AND an arm's spread of normalised
    outputs below ``spread_threshold`` times a well-spread value (``1/sqrt(dim)``); healthy runs
    stay near 1 (docs/remedies.md shows what collapsed runs read). ``stop=True`` ends the run at
    that epoch (checkpoints and export as usual).
    """

    def __init__(
        self, cosine_threshold: float = 0.99, spread_threshold: float = 0.1, stop: bool = False
    ) -> None:
        self.cosine_threshold = cosine_threshold
        self.spread_threshold = spread_threshold
        self.stop = stop
        self.collapsed_at: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        arms = pl_module.trained_arms() if hasattr(pl_module, "trained_arms") else ()
        if stage == "fit" and set(arms) != {"cnn", "vit"}:
            rank_zero_only(print)(
                f"collapse monitor off: it reads the cosine between the CNN and the ViT, and "
                f"{type(pl_module).__name__} trains {', '.join(arms) or 'neither'} (the online "
                "probe and kNN still measure the representation)"
            )

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
            "direction; see docs/remedies.md on collapse (start from pretrained weights)."
        )
        rank_zero_warn(message)
        pl_module.log("collapse/epoch", float(trainer.current_epoch), on_epoch=True)
        if self.stop:
            trainer.should_stop = True
