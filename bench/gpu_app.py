"""``experiment=paper_reference`` through ``cass-pretrain`` for a bounded number of steps, per
precision: images/s, peak memory and the data-wait share, read from each run's summary.json.

This is the real path (files on disk, the paper's augmentation in the loader workers, the
callbacks, checkpoints), so set against ``bench/gpu_step.py`` at the same size and batch it
shows what the data path costs (the target: at least 90 % of the in-memory rate).

    python bench/gpu_app.py --device cuda --steps 60 --precisions bf16-mixed 32-true \\
        bf16-mixed:device                      # the last with data.augment_on=device
    python bench/gpu_app.py --device cpu --steps 2 --precisions 32-true \\
        --set model.cnn=resnet10t model.vit=vit_tiny_patch16_224 model.img_size=32 \\
        data.images_per_class=4 data.batch_size=4     # a CPU smoke run

Each run goes to ``--work/<precision>`` (a fresh temporary folder by default). Prints a markdown
table (``--out FILE`` also writes it); a run that fails becomes a row saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cass_lightning.machine import device_label


def run_app(args: argparse.Namespace, run: str, work: Path) -> str:
    """One bounded run (``precision`` or ``precision:device`` for ``data.augment_on=device``);
    its table row."""
    precision, _, place = run.partition(":")
    place = place or "loader"
    folder = work / run.replace(":", "_")
    trainer = "trainer=gpu" if args.device == "cuda" else "trainer=cpu"
    command = [
        sys.executable, "-m", "cass_lightning.apps.pretrain", f"experiment={args.experiment}",
        "model.pretrained=false", trainer, f"trainer.precision={precision}",
        f"++trainer.max_steps={args.steps}", "trainer.max_epochs=-1",
        f"data.num_workers={args.num_workers}", f"paths.data_dir={work / 'data'}",
        f"hydra.run.dir={folder}", "print_config=false", "rich_progress_bar=false",
        "trainer.enable_progress_bar=false", "callbacks.export_backbones=null",
        f"data.augment_on={place}",
        "callbacks.online_evaluation=null", "trainer.check_val_every_n_epoch=1000",
        *args.set,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    log_file = folder.with_suffix(".log")
    with log_file.open("w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                              timeout=args.timeout)  # fmt: skip
    wall = time.perf_counter() - start
    summary_file = folder / "summary.json"
    if proc.returncode != 0 or not summary_file.is_file():
        log = [ln for ln in log_file.read_text().splitlines() if ln.strip()]
        named = [ln for ln in log if "Error" in ln or "error:" in ln] or log or [""]
        why = named[-1].strip().replace("|", "/")[:150]
        return f"| {precision} | {place} | failed (exit {proc.returncode}): {why} | | | | | |"
    s = json.loads(summary_file.read_text())
    speed = s.get("speed") or {}
    on = ", ".join(k for k, v in speed.items() if v) or "none"
    share = s.get("data_wait_share")
    peak, kind = s.get("peak_memory_gib"), s.get("memory_kind")
    return (f"| {precision} | {place} | {s['images_per_s']:.1f} | "
            f"{'-' if peak is None else f'{peak:.1f} ({kind})'} | "
            f"{'-' if share is None else f'{share:.2f}'} | {s['steps']} in {wall:.0f} s | "
            f"{on} | {device_label(s.get('machine'))} |")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--steps", type=int, default=60, help="optimiser steps per run")
    p.add_argument(
        "--precisions",
        nargs="+",
        default=["bf16-mixed", "32-true"],
        help="runs: a precision, or precision:device for data.augment_on=device",
    )
    p.add_argument("--experiment", default="paper_reference")
    p.add_argument("--num-workers", type=int, default=8)
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run")
    p.add_argument("--work", type=Path, default=None, help="folder for data and runs")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run")
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    args = parse_args(argv)
    lines = [
        f"`experiment={args.experiment}` through cass-pretrain, {args.steps} steps, "
        f"{args.num_workers} loader workers ({args.device}); extra: {' '.join(args.set) or '-'}",
        "",
        "| precision | augmentation | images/s | peak memory GiB | data-wait share | steps "
        "| speed settings on | device (the run's summary.json) |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for run in args.precisions:
            try:
                row = run_app(args, run, work)
            except subprocess.TimeoutExpired:
                row = f"| {run} | | timed out after {args.timeout} s | | | | | |"
            print(row, flush=True)
            lines.append(row)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
