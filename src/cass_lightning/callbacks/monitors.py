"""Monitors that read a run as it goes: training throughput, and every method's collapse alarm."""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

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
    """Warns once, naming the method and the arm, when a method's outputs collapse, or stops
    the run.

    Collapse: every image mapped to nearly one direction. Read at each training epoch end from
    what every :class:`~cass_lightning.modules.base.PretrainingModule` logs per trained arm:
    the std of its l2-normalised outputs over the batch (``train/<arm>_std_epoch``; lightly's
    ``std_of_l2_normalized``, SimSiam's collapse reading), relative to a well-spread value
    ``1/sqrt(dim)``: an arm below ``spread_threshold`` has collapsed. For CASS, whose collapse is
    the two arms agreeing on one direction, the mean cosine between the arms
    (``train/cosine_epoch``) must also exceed ``cosine_threshold``. Healthy runs stay near 1
    (docs/remedies.md shows what collapsed runs read). ``stop=True`` ends the run at that epoch
    (checkpoints and export as usual).
    """

    def __init__(
        self, cosine_threshold: float = 0.99, spread_threshold: float = 0.1, stop: bool = False
    ) -> None:
        self.cosine_threshold = cosine_threshold
        self.spread_threshold = spread_threshold
        self.stop = stop
        self.collapsed_at: int | None = None

    def spreads(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Each trained arm's spread of normalised outputs this epoch, times ``sqrt(dim)``."""
        metrics, widths = trainer.callback_metrics, getattr(pl_module, "output_widths", {})
        return {
            arm: float(metrics[f"train/{arm}_std_epoch"]) * math.sqrt(widths[arm])
            for arm in pl_module.trained_arms()
            if f"train/{arm}_std_epoch" in metrics and widths.get(arm, 0) > 0
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.collapsed_at is not None or not hasattr(pl_module, "trained_arms"):
            return
        spread = self.spreads(trainer, pl_module)
        low = [arm for arm, value in spread.items() if value < self.spread_threshold]
        cosine = trainer.callback_metrics.get("train/cosine_epoch")
        if not low or (cosine is not None and float(cosine) < self.cosine_threshold):
            return
        self.collapsed_at = epoch = trainer.current_epoch
        name = getattr(pl_module, "method_name", "") or type(pl_module).__name__
        widths = pl_module.output_widths
        readings = ", ".join(f"{arm} {value:.3f}" for arm, value in spread.items())
        agree = "" if cosine is None else (
            f"mean cosine between the arms {float(cosine):.4f} (threshold "
            f"{self.cosine_threshold}), "
        )  # fmt: skip
        message = (
            f"{name} collapse at epoch {epoch}: {agree}spread of normalised outputs relative "
            f"to 1/sqrt({widths[low[0]]}): {readings} (threshold {self.spread_threshold}); "
            f"collapsed: {' and '.join(low)}. Every image is mapped to nearly one direction; "
            "see docs/remedies.md on collapse."
        )
        rank_zero_warn(message)
        pl_module.log("collapse/epoch", float(epoch), on_epoch=True)
        if self.stop:
            trainer.should_stop = True
