"""The training step with the speed settings: a plain PyTorch loop against ``CASSModule`` on
Lightning, per precision, batch size and settings, on in-memory batches (no data loading).

Each configuration is ``precision:batch:settings[:img_size]``, e.g. ``bf16-mixed:256:best``:

- ``settings`` ``off``: none of the speed settings; ``shipped``: what ``speed`` resolves to on
  this device with the defaults (``cass_lightning.runtime.resolve_speed``; on CUDA: TF32, fused
  Adam, channels_last for the CNN, cuDNN benchmark); ``best``: shipped plus ``torch.compile`` of
  both arms. The plain loop gets the same settings as the module (same rule, same switches).
- The first ``--warmup`` steps are untimed and reported as ``warmup s`` (compilation included),
  then ``--steps`` timed steps; images/s, peak GPU memory, and Lightning / plain.

    python bench/gpu_step.py --device cuda --configs bf16-mixed:64:shipped bf16-mixed:256:best
    python bench/gpu_step.py --device cpu --cnn resnet10t --vit vit_tiny_patch16_224 \\
        --configs 32-true:4:shipped:32 --steps 2 --warmup 1          # a CPU smoke run

Prints a markdown table (``--out FILE`` also writes it); asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cass_lightning import CASSModule
from cass_lightning.machine import local_device, time_ratio
from cass_lightning.modules.optim import build_optimizer
from cass_lightning.runtime import (
    SPEED_KEYS,
    apply_speed_globals,
    apply_speed_settings,
    apply_speed_switches,
    resolve_speed,
    speed_request,
)

SEED = 0
SETTINGS = ("off", "shipped", "best")


class Case(NamedTuple):
    precision: str
    batch: int
    settings: str
    img_size: int


def parse_case(text: str, img_size: int) -> Case:
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[2] not in SETTINGS or not parts[1].isdigit():
        raise SystemExit(f"bad config {text!r}: precision:batch:{'|'.join(SETTINGS)}[:img_size]")
    size = int(parts[3]) if len(parts) == 4 else img_size
    return Case(parts[0], int(parts[1]), parts[2], size)


def settings_for(case: Case, on_cuda: bool) -> dict[str, bool]:
    if case.settings == "off":
        return resolve_speed(dict.fromkeys(SPEED_KEYS, False), on_cuda, 0, case.precision)
    asked = speed_request({"compile": case.settings == "best" or "auto"})
    return resolve_speed(asked, on_cuda, 0, case.precision)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader(case: Case, steps: int, device: torch.device) -> DataLoader:
    torch.manual_seed(SEED)
    images = torch.randn(case.batch * min(steps, 8), 3, case.img_size, case.img_size)
    return DataLoader(TensorDataset(images), batch_size=case.batch, drop_last=True,
                      pin_memory=device.type == "cuda")  # fmt: skip


def cycle(data: DataLoader, n: int) -> Any:
    seen = 0
    while True:
        for batch in data:
            if seen == n:
                return
            yield batch
            seen += 1


def run_plain(args: argparse.Namespace, case: Case, device: torch.device) -> dict[str, float]:
    """The reference notebook's loop (two arms, cosine loss), one Adam over both arms."""
    speed = settings_for(case, device.type == "cuda")
    torch.manual_seed(SEED)
    cnn = timm.create_model(args.cnn, pretrained=False, num_classes=1000)
    vit = timm.create_model(args.vit, pretrained=False, num_classes=1000, img_size=case.img_size)
    model = torch.nn.ModuleDict({"cnn": cnn, "vit": vit}).to(device).train()
    apply_speed_globals(speed, device.type == "cuda")
    apply_speed_switches(model, speed["channels_last"],
                         {"cnn": speed["compile_cnn"], "vit": speed["compile_vit"]})  # fmt: skip
    groups = [{"params": list(model.parameters())}]
    opt = build_optimizer(groups, "adam", lr=1e-3, fused=speed["fused_optimizer"])
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(case.precision)
    layout = torch.channels_last if speed["channels_last"] else torch.contiguous_format
    start = t0 = 0.0
    total = args.warmup + args.steps
    for i, (x,) in enumerate(cycle(loader(case, total, device), total)):
        if i == 0:
            sync(device)
            start = time.perf_counter()
        if i == args.warmup:
            sync(device)
            t0 = time.perf_counter()
        x = x.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            z_vit, z_cnn = vit(x), cnn(x.contiguous(memory_format=layout))
        loss = (2 - 2 * F.cosine_similarity(z_vit.float(), z_cnn.float())).mean()
        loss.backward()
        opt.step()
    sync(device)
    t1 = time.perf_counter()
    return {"images_per_s": args.steps * case.batch / (t1 - t0), "warmup_s": t0 - start}


class StepClock(L.Callback):
    """Wall clock around the timed steps (a device sync only at its two ends)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.seen = 0
        self.start = self.t0 = self.t1 = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if self.seen == 0:
            sync(self.device)
            self.start = time.perf_counter()
        if self.seen == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.seen += 1
        if self.seen == self.warmup + self.steps:
            sync(self.device)
            self.t1 = time.perf_counter()


def run_lightning(args: argparse.Namespace, case: Case, device: torch.device) -> dict[str, float]:
    speed = settings_for(case, device.type == "cuda")
    torch.manual_seed(SEED)
    model = CASSModule(
        cnn=args.cnn, vit=args.vit, img_size=case.img_size, pretrained=False,
        optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
        scheduler={"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6},
    )  # fmt: skip
    apply_speed_settings(speed, model, device.type == "cuda")
    clock = StepClock(args.warmup, args.steps, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision=case.precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        max_steps=args.warmup + args.steps, callbacks=[clock],
        benchmark=speed["cudnn_benchmark"] if device.type == "cuda" else None,
    )  # fmt: skip
    total = args.warmup + args.steps
    batches = [b[0] for b in cycle(loader(case, total, device), total)]
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return {"images_per_s": args.steps * case.batch / (clock.t1 - clock.t0),
            "warmup_s": clock.t0 - clock.start}  # fmt: skip


def measure(args: argparse.Namespace, case: Case, device: torch.device) -> list[str]:
    """Both paths for one configuration: table rows (an error becomes a row saying so)."""
    results: dict[str, dict[str, float] | str] = {}
    for path, run in (("plain", run_plain), ("lightning", run_lightning)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            results[path] = run(args, case, device)
            if device.type == "cuda":
                results[path]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        except Exception as error:  # fail soft: one configuration failing says why
            results[path] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    rows = []
    plain = results["plain"]
    where = local_device(device, case.precision)  # both paths ran here, one after the other
    for path, got in results.items():
        label = f"{case.precision} | {case.batch} | {case.img_size} | {case.settings} | {path}"
        if isinstance(got, str):
            rows.append(f"| {label} | {got} | | | | {where} |")
            continue
        ratio = ""
        if path == "lightning" and isinstance(plain, dict):
            value, why = time_ratio(got["images_per_s"], where, plain["images_per_s"], where)
            ratio = f"{value:.2f}" if value is not None else why
        peak = f"{got['peak_gib']:.1f}" if "peak_gib" in got else "-"
        rows.append(f"| {label} | {got['images_per_s']:.1f} | {ratio} | {got['warmup_s']:.1f} | "
                    f"{peak} | {where} |")  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--cnn", default="resnet50")
    p.add_argument("--vit", default="vit_base_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps first (compile in them)")
    p.add_argument("--configs", nargs="+", default=["bf16-mixed:64:shipped"],
                   help="precision:batch:off|shipped|best[:img_size]")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    cases = [parse_case(text, args.img_size) for text in args.configs]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"Training step, {args.cnn} + {args.vit}, in-memory batches, {args.warmup} warmup + "
        f"{args.steps} timed steps; {name}, torch {torch.__version__}, lightning "
        f"{L.__version__}", "",
        "| precision | batch | px | settings | path | images/s | Lightning / plain | warmup s "
        "| peak GiB | device |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    print("\n".join(lines), flush=True)
    for case in cases:
        rows = measure(args, case, device)
        print("\n".join(rows), flush=True)
        lines += rows
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
