"""Training-step throughput of CASS: a plain PyTorch loop against ``CASSModule`` on Lightning.

Every mode trains the same two timm networks (built fresh with the same seed) on the same
batches of synthetic, already-normalised images held in memory, so data loading is excluded and
the numbers measure the training step. Both paths read those batches through the same
``DataLoader`` over a ``TensorDataset`` (``num_workers=0``).

Modes:

- ``plain-fp32``: the reference notebook's loop: one Adam(lr=1e-3) and one
  CosineAnnealingLR(T_max=16, eta_min=1e-6) per network, both stepped every iteration,
  ``loss = (2 - 2 * cosine_similarity(vit(x), cnn(x))).mean()``.
- ``lightning-fp32``: ``CASSModule`` fit by ``lightning.Trainer(precision="32-true")``.
- ``lightning-bf16``: the same with ``precision="bf16-mixed"``.
- ``plain-bf16``: the plain loop under ``torch.autocast(dtype=torch.bfloat16)`` (reference).
- CUDA only: ``lightning-fp16`` (``precision="16-mixed"``) and ``plain-fp16`` (autocast fp16
  with a ``GradScaler``).

Each mode runs ``--warmup`` untimed steps then ``--steps`` timed steps. The modes run
interleaved ``--repeats`` times (the order rotates every repeat) and the median images/s per mode
is reported, so drift on a shared machine hits all modes alike. The script prints numbers and
asserts nothing.

    .venv/bin/python bench/throughput.py                 # ~3-4 min on a 2-core CPU
    .venv/bin/python bench/throughput.py --device cuda --img-size 224 --batch-size 64
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cass_lightning import CASSModule
from cass_lightning.machine import local_device, time_ratio

SEED = 0

#: mode key -> (table label, path, precision)
MODES: dict[str, tuple[str, str, str]] = {
    "plain-fp32": ("plain fp32", "plain", "32-true"),
    "lightning-fp32": ("lightning fp32", "lightning", "32-true"),
    "lightning-bf16": ("lightning bf16-mixed", "lightning", "bf16-mixed"),
    "plain-bf16": ("plain bf16 autocast", "plain", "bf16-mixed"),
    "lightning-fp16": ("lightning 16-mixed", "lightning", "16-mixed"),
    "plain-fp16": ("plain fp16 autocast + GradScaler", "plain", "16-mixed"),
}
CPU_MODES = ("plain-fp32", "lightning-fp32", "lightning-bf16", "plain-bf16")
CUDA_ONLY_MODES = ("lightning-fp16", "plain-fp16")


@dataclass(frozen=True)
class Config:
    cnn: str
    vit: str
    img_size: int
    batch_size: int
    steps: int
    warmup: int
    device: torch.device


# --------------------------------------------------------------------------------- helpers
def quiet() -> None:
    """Keep Lightning's info lines and library warnings out of the table."""
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(choice)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_description(device: torch.device) -> str:
    text = f"CPU {cpu_name()} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def make_loader(images: torch.Tensor, batch_size: int, device: torch.device) -> DataLoader:
    """The same in-memory batches, in the same order, for every mode."""
    return DataLoader(
        TensorDataset(images),
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


# ------------------------------------------------------------------------------ plain loop
def run_plain(cfg: Config, precision: str, images: torch.Tensor) -> tuple[float, float]:
    """The reference notebook's loop: two Adams, two per-step cosine schedules."""
    device = cfg.device
    torch.manual_seed(SEED)
    # Same constructor calls, in the same order, as CASSModule's (CNN first): identical weights.
    cnn = timm.create_model(cfg.cnn, pretrained=False, num_classes=1000, in_chans=3)
    vit = timm.create_model(
        cfg.vit, pretrained=False, num_classes=1000, in_chans=3, img_size=cfg.img_size
    )
    cnn.to(device).train()
    vit.to(device).train()
    opt_cnn = torch.optim.Adam(cnn.parameters(), lr=1e-3)
    opt_vit = torch.optim.Adam(vit.parameters(), lr=1e-3)
    sched_cnn = torch.optim.lr_scheduler.CosineAnnealingLR(opt_cnn, T_max=16, eta_min=1e-6)
    sched_vit = torch.optim.lr_scheduler.CosineAnnealingLR(opt_vit, T_max=16, eta_min=1e-6)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None

    t0 = t1 = c0 = c1 = 0.0
    for i, (x,) in enumerate(make_loader(images, cfg.batch_size, device)):
        if i == cfg.warmup:  # the batch is fetched; the clock starts before its step
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
        x = x.to(device, non_blocking=True)
        opt_cnn.zero_grad()
        opt_vit.zero_grad()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z_vit, z_cnn = vit(x), cnn(x)
        loss = (2 - 2 * F.cosine_similarity(z_vit.float(), z_cnn.float())).mean()
        if scaler is None:
            loss.backward()
            opt_cnn.step()
            opt_vit.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt_cnn)
            scaler.step(opt_vit)
            scaler.update()
        sched_cnn.step()
        sched_vit.step()
        if i == cfg.warmup + cfg.steps - 1:
            sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            break
    return cfg.steps * cfg.batch_size / (t1 - t0), (c1 - c0) / (t1 - t0)


# ------------------------------------------------------------------------------- Lightning
class StepTimer(L.Callback):
    """Clock from the start of the first timed batch to the end of the last one."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.seen = 0
        self.images = 0
        self.t0 = self.t1 = self.c0 = self.c1 = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int):
        if self.seen == self.warmup:
            sync(self.device)
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        if self.seen >= self.warmup:
            self.images += int(batch[0].shape[0])
        if self.seen == self.warmup + self.steps - 1:
            sync(self.device)
            self.t1, self.c1 = time.perf_counter(), time.process_time()
        self.seen += 1

    def result(self) -> tuple[float, float]:
        """(images/s, process CPU seconds per wall second) over the timed steps."""
        if self.seen < self.warmup + self.steps:
            raise RuntimeError(f"Lightning ran {self.seen} steps, expected more")
        wall = self.t1 - self.t0
        return self.images / wall, (self.c1 - self.c0) / wall


def run_lightning(cfg: Config, precision: str, images: torch.Tensor) -> tuple[float, float]:
    torch.manual_seed(SEED)
    model = CASSModule(
        cnn=cfg.cnn,
        vit=cfg.vit,
        img_size=cfg.img_size,
        pretrained=False,
        optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        scheduler={"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6},
    )
    timer = StepTimer(cfg.warmup, cfg.steps, cfg.device)
    trainer = L.Trainer(
        accelerator="gpu" if cfg.device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=cfg.warmup + cfg.steps,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=make_loader(images, cfg.batch_size, cfg.device))
    return timer.result()


# ------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cnn", default="resnet18")
    p.add_argument("--vit", default="vit_tiny_patch16_224")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before the clock starts")
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs per mode (median)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--modes",
        nargs="+",
        choices=list(MODES),
        default=None,
        help=f"subset of modes (default: {' '.join(CPU_MODES)}, plus the fp16 ones on CUDA)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.batch_size < 2:
        p.error("need --steps >= 1, --warmup >= 0, --repeats >= 1 and --batch-size >= 2")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    modes = args.modes or list(CPU_MODES) + (list(CUDA_ONLY_MODES) if device.type == "cuda" else [])
    if device.type != "cuda" and any(m in CUDA_ONLY_MODES for m in modes):
        raise SystemExit(f"modes {CUDA_ONLY_MODES} need CUDA")
    cfg = Config(
        args.cnn, args.vit, args.img_size, args.batch_size, args.steps, args.warmup, device
    )

    # Random images, already "normalised" (zero mean, unit variance), identical for every mode.
    gen = torch.Generator().manual_seed(SEED + 1)
    n_images = (cfg.warmup + cfg.steps) * cfg.batch_size
    images = torch.randn(n_images, 3, cfg.img_size, cfg.img_size, generator=gen)

    print(
        f"torch {torch.__version__}, lightning {L.__version__}, timm {timm.__version__} | "
        f"{device_description(device)} | models {cfg.cnn} + {cfg.vit} | img {cfg.img_size} px | "
        f"batch {cfg.batch_size} | {cfg.warmup} warmup + {cfg.steps} timed steps, "
        f"{args.repeats} repeats (median)",
        flush=True,
    )
    runners: dict[str, Callable[[Config, str, torch.Tensor], tuple[float, float]]] = {
        "plain": run_plain,
        "lightning": run_lightning,
    }
    results: dict[str, list[float]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        order = modes[rep % len(modes) :] + modes[: rep % len(modes)]
        for mode in order:
            label, path, precision = MODES[mode]
            ips, cpu = runners[path](cfg, precision, images)
            results[mode].append(ips)
            # CPU busy well below the thread count means something else took the cores.
            print(
                f"  repeat {rep + 1}/{args.repeats} {label:<34} {ips:8.1f} images/s"
                f"  (process CPU busy {cpu:.2f} of {torch.get_num_threads()} threads)",
                flush=True,
            )
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    median = {m: statistics.median(v) for m, v in results.items()}
    base = median.get("plain-fp32")
    where = {m: local_device(device, MODES[m][2]) for m in modes}  # every mode ran here
    print()
    print("| mode | images/s | vs plain fp32 | device |")
    print("|---|---:|---:|---|")
    for mode in modes:
        ratio = "n/a"
        if base:
            value, why = time_ratio(median[mode], where[mode], base, where["plain-fp32"])
            ratio = f"{value:.3f}" if value is not None else why
        print(f"| {MODES[mode][0]} | {median[mode]:.1f} | {ratio} | {where[mode]} |")
    print()
    for mode, target in (("lightning-fp32", 0.95), ("lightning-bf16", 1.5)):
        if base and mode in median:
            ratio = median[mode] / base
            print(f"{MODES[mode][0]} / plain fp32 = {ratio:.3f} (target >= {target}) on "
                  f"{where[mode]}")  # fmt: skip
        else:
            print(f"{MODES[mode][0]} / plain fp32 = n/a (target >= {target}; mode not run)")


if __name__ == "__main__":
    main()
