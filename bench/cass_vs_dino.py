"""Pretraining time per epoch: CASS (both arms at once) against DINO on each arm alone.

The paper's efficiency claim is about wall time: 100 epochs of CASS took 0.31x of DINO's time on
the same data and machine. This script trains, in one run, on the same synthetic image files
(the repo's ``SyntheticDataModule``, read and augmented by the real data path):

- ``CASS``: ``CASSModule`` (CNN + ViT, one augmented view, the paper's logits head and Adam);
- ``DINO-ViT`` and ``DINO-CNN``: ``DINOModule`` on the same ViT and CNN, ``global_crops`` global
  crops plus ``--local-crops`` local crops per image (``data.train_views=dino``), the teacher
  seeing the global crops.

Each run does ``--warmup-epochs`` untimed epochs then ``--epochs`` timed ones (validation off).
An epoch's time is everything a user waits for: loading, augmentation, forward, backward,
optimiser and EMA. It prints seconds per epoch for each, and CASS/DINO-ViT, CASS/DINO-CNN and
CASS/(DINO-ViT + DINO-CNN) (DINO needs one run per arm to give both networks that CASS gives).

    .venv/bin/python bench/cass_vs_dino.py                 # a few minutes on a 2-core CPU
    .venv/bin/python bench/cass_vs_dino.py --device cuda   # ResNet-50 + ViT-B/16 at 224 px
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch

from cass_lightning import CASSModule
from cass_lightning.data import SyntheticDataModule
from cass_lightning.machine import local_device, time_ratio
from cass_lightning.modules.dino import DINOModule
from cass_lightning.runtime import (
    SPEED_KEYS,
    apply_speed_settings,
    resolve_speed,
    speed_request,
)

SEED = 0
CLASSES = 6  # of the synthetic set

#: Defaults per device: a 2-core CPU finishes in minutes; a GPU runs the paper's encoders.
DEFAULTS: dict[str, dict[str, Any]] = {
    "cpu": dict(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64, images=240,
                batch_size=32, dino_head_dim=2048, num_workers=0),
    "cuda": dict(cnn="resnet50", vit="vit_base_patch16_224", img_size=224, images=1200,
                 batch_size=32, dino_head_dim=65536, num_workers=8),
}  # fmt: skip


class EpochTimer(L.Callback):
    """Wall seconds of every training epoch (CUDA synchronised at both ends)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._start)


def quiet() -> None:
    """Keep Lightning's info lines and library warnings out of the table."""
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(choice)


def device_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine() or "CPU"
    text = f"CPU {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def build_model(job: str, args: argparse.Namespace) -> L.LightningModule:
    torch.manual_seed(SEED)
    if job == "CASS":
        return CASSModule(cnn=args.cnn, vit=args.vit, img_size=args.img_size, pretrained=False)
    return DINOModule(
        arm="vit" if job == "DINO-ViT" else "cnn",
        cnn=args.cnn,
        vit=args.vit,
        img_size=args.img_size,
        # DINO's reference head has BatchNorm for ResNets
        head={"dim": args.dino_head_dim, "batch_norm": job == "DINO-CNN"},
    )


def time_job(job: str, args: argparse.Namespace, device: torch.device, root: Path) -> float:
    """Median seconds per timed epoch of one method."""
    on_cuda = device.type == "cuda"
    # The same speed settings for every method, so the time ratio stays fair.
    asked = {"off": dict.fromkeys(SPEED_KEYS, False), "shipped": speed_request({}),
             "best": speed_request({"compile": True})}[args.speed]  # fmt: skip
    speed = resolve_speed(asked, on_cuda, args.num_workers, args.precision)
    data = SyntheticDataModule(
        root,
        images_per_class=max(1, args.images // CLASSES),
        val_images_per_class=1,
        image_size=args.img_size,
        img_size=args.img_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        check_images="none",
        train_views="paper" if job == "CASS" else "dino",
        pin_memory=speed["pin_memory"],
        persistent_workers=speed["persistent_workers"],
    )
    timer = EpochTimer()
    model = build_model(job, args)
    apply_speed_settings(speed, model, on_cuda)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=args.precision,
        max_epochs=args.warmup_epochs + args.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        benchmark=speed["cudnn_benchmark"] if on_cuda else None,
    )
    trainer.fit(model, datamodule=data)
    return statistics.median(timer.seconds[args.warmup_epochs :])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cnn", help="timm CNN (cpu: resnet18, cuda: resnet50)")
    p.add_argument("--vit", help="timm ViT (cpu: vit_tiny_patch16_224, cuda: vit_base_patch16_224)")
    p.add_argument("--img-size", type=int, help="global crop / CASS input size (cpu 64, cuda 224)")
    p.add_argument("--images", type=int, help="training images (cpu 240, cuda 1200)")
    p.add_argument("--batch-size", type=int, help="(cpu 32, cuda 32)")
    p.add_argument("--dino-head-dim", type=int, help="DINO head output (cpu 2048, cuda 65536)")
    p.add_argument("--num-workers", type=int, help="loader processes (cpu 0, cuda 8)")
    p.add_argument("--epochs", type=int, default=1, help="timed epochs per method")
    p.add_argument("--warmup-epochs", type=int, default=1, help="untimed epochs first")
    p.add_argument("--precision", default="32-true", help="Lightning precision (DINO: fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--speed", choices=("off", "shipped", "best"), default="shipped",
                   help="speed settings for every method: none, the defaults resolved for the "
                   "device, or the defaults plus torch.compile of every arm")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None, help="synthetic images (default: tmp)")
    p.add_argument("--jobs", nargs="+", choices=("CASS", "DINO-ViT", "DINO-CNN"),
                   default=["CASS", "DINO-ViT", "DINO-CNN"])  # fmt: skip
    args = p.parse_args(argv)
    args.device = resolve_device(args.device)
    for key, value in DEFAULTS[args.device.type].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 1 or args.warmup_epochs < 0 or args.batch_size < 2:
        p.error("need --epochs >= 1, --warmup-epochs >= 0 and --batch-size >= 2")
    if args.images // CLASSES * CLASSES < args.batch_size:
        p.error("--images must give at least one full batch")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    print(
        f"torch {torch.__version__}, lightning {L.__version__}, timm {timm.__version__} | "
        f"{device_description(device)} | {args.cnn} + {args.vit} | {args.img_size} px | "
        f"{args.images // CLASSES * CLASSES} images, batch {args.batch_size} | "
        f"{args.warmup_epochs} warmup + {args.epochs} timed epoch(s) | {args.precision} | "
        f"speed settings {args.speed} | "
        f"DINO: 2 global + 6 local crops, head {args.dino_head_dim}",
        flush=True,
    )
    seconds: dict[str, float] = {}
    where: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp) / "data"
        for job in args.jobs:
            seconds[job] = time_job(job, args, device, root)
            where[job] = local_device(device, args.precision)
            # A 1-minute load average above the thread count means other work shared the cores.
            load = os.getloadavg()[0]
            print(f"  {job:<9} {seconds[job]:8.2f} s/epoch  (load average {load:.2f})", flush=True)
    print()
    print("| method | s/epoch | device |")
    print("|---|---:|---|")
    for job, value in seconds.items():
        print(f"| {job} | {value:.2f} | {where[job]} |")
    print()
    if "CASS" in seconds:
        cass = seconds["CASS"]
        for name, others in (("DINO-ViT", ["DINO-ViT"]), ("DINO-CNN", ["DINO-CNN"]),
                             ("(DINO-ViT + DINO-CNN)", ["DINO-ViT", "DINO-CNN"])):  # fmt: skip
            if all(o in seconds for o in others):
                devices = {where[o] for o in others}
                other = where[others[0]] if len(devices) == 1 else " + ".join(sorted(devices))
                value, why = time_ratio(cass, where["CASS"], sum(seconds[o] for o in others),
                                        other)  # fmt: skip
                print(f"CASS / {name} = " + (f"{value:.3f}" if value is not None else why))
        print("(the paper: CASS takes 0.31x of DINO's pretraining time)")


if __name__ == "__main__":
    main()
