"""Data-loading throughput of the training pipeline: original JPEGs against the decoded cache.

The paper trains at 384 px on large images (ISIC JPEGs are ~1000x700 px and up). This script
writes ``--images`` synthetic JPEGs of ``--width`` x ``--height`` px (quality 90, smooth noise,
shapes and grain rather than flat colour, so they decode like photographs), indexes them with
:class:`FileReader`, and measures the images/s of the TRAIN pipeline (read + the paper's
``paper_train_transform(img_size)`` + default collate) through a ``DataLoader``:

- ``originals``: every image decoded from its JPEG and resized by the transform's ``Resize``;
- ``cache``: pixels read from :func:`build_cache` at ``img_size`` (built before timing, its build
  time reported separately), so the transform's ``Resize`` is a no-op copy.

Each measurement iterates one warm-up batch (worker start-up excluded) and then two epochs of
shuffled indices; the clock starts when the warm-up batch arrives. With workers, batches that
were prefetched while the warm-up batch was made count as timed work, which flatters workers
slightly. The configurations run interleaved ``--repeats`` times (the order rotates every
repeat) and the median images/s is reported, so drift on a shared machine hits all alike.

A per-stage breakdown (in this process, one epoch, mean ms per image) shows where the time goes:
read (JPEG decode or cache lookup), each transform step, and collate. The script prints numbers
and asserts nothing.

    .venv/bin/python bench/dataloading.py                   # ~2-3 min on a 2-core CPU
    .venv/bin/python bench/dataloading.py --images 512 --workers 0 4 8 --data-dir /tmp/jpegs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter, features
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import transforms as T

from cass_lightning.data.cache import build_cache
from cass_lightning.data.index import FileReader, ImageReader, SampleIndex
from cass_lightning.data.transforms import paper_train_transform
from cass_lightning.machine import local_device

SEED = 0
JPEG_QUALITY = 90
MARKER = "bench_dataloading.json"


# ------------------------------------------------------------------------------ the images
def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour fields, a few lesion-like shapes and sensor grain: JPEG-realistic content."""
    coarse = rng.uniform(40, 220, (max(height // 48, 2), max(width // 48, 2), 3))
    base = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.03, 0.25) * width, rng.uniform(0.03, 0.25) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour)
        else:
            points = [
                (cx + rx * np.cos(a), cy + ry * np.sin(a))
                for a in np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            ]
            draw.polygon(points, fill=colour)
    for _ in range(int(rng.integers(2, 6))):  # hair-like strokes
        xy = [tuple(rng.uniform(0, 1, 2) * (width, height)) for _ in range(3)]
        draw.line(xy, fill=tuple(int(c) for c in rng.integers(0, 80, 3)), width=3)
    soft = base.filter(ImageFilter.GaussianBlur(radius=2))
    grain = rng.normal(0.0, 6.0, (height, width, 3))
    pixels = np.clip(np.asarray(soft, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def prepare_images(folder: Path, count: int, width: int, height: int) -> list[str]:
    """Write the JPEGs once; a folder already holding the same set is reused as is."""
    keys = [f"img_{i:05d}.jpg" for i in range(count)]
    wanted = {"count": count, "width": width, "height": height, "quality": JPEG_QUALITY}
    marker = folder / MARKER
    with contextlib.suppress(OSError, ValueError):
        if json.loads(marker.read_text()) == wanted and all((folder / k).is_file() for k in keys):
            return keys
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for key in keys:
        synthetic_photo(rng, width, height).save(folder / key, quality=JPEG_QUALITY)
    marker.write_text(json.dumps(wanted))
    return keys


# ---------------------------------------------------------------------------- measurements
class ReaderDataset(Dataset):
    """What a training dataset does per item: ``transform(reader(key))``."""

    def __init__(self, reader: ImageReader, keys: Sequence[str], transform: Callable) -> None:
        self.reader, self.keys, self.transform = reader, list(keys), transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.reader(self.keys[i]))


def loader_rate(dataset: ReaderDataset, batch_size: int, workers: int, seed: int) -> float:
    """Images/s over two shuffled epochs, after one untimed warm-up batch."""
    rng = np.random.default_rng(seed)
    n = len(dataset)
    order = [int(i) for i in rng.permutation(n)[:batch_size]]  # warm-up batch
    for _ in range(2):
        order += [int(i) for i in rng.permutation(n)]
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers)
    batches = iter(loader)
    warm = next(batches)
    start = time.perf_counter()
    images = sum(int(batch.shape[0]) for batch in batches)
    elapsed = time.perf_counter() - start
    del warm
    return images / elapsed


def step_label(step: Any) -> str:
    if isinstance(step, T.RandomApply):
        inner = "+".join(type(t).__name__ for t in step.transforms)
        return f"RandomApply(p={step.p}): {inner}"
    if isinstance(step, T.Resize):
        return f"Resize({tuple(step.size) if isinstance(step.size, list) else step.size})"
    return type(step).__name__


def stage_times(
    reader: ImageReader, keys: Sequence[str], transform: T.Compose, batch_size: int
) -> dict[str, float]:
    """Mean ms per image of each stage, in this process (same random draws for every source)."""
    torch.manual_seed(SEED)
    totals: dict[str, float] = {"read": 0.0}
    totals.update({step_label(s): 0.0 for s in transform.transforms})
    tensors: list[torch.Tensor] = []
    for key in keys:
        t0 = time.perf_counter()
        x = reader(key)
        totals["read"] += time.perf_counter() - t0
        for step in transform.transforms:
            t0 = time.perf_counter()
            x = step(x)
            totals[step_label(step)] += time.perf_counter() - t0
        tensors.append(x)
    collate = 0.0
    for start in range(0, len(tensors), batch_size):
        t0 = time.perf_counter()
        default_collate(tensors[start : start + batch_size])
        collate += time.perf_counter() - t0
    totals["collate"] = collate
    return {name: 1000.0 * seconds / len(keys) for name, seconds in totals.items()}


# --------------------------------------------------------------------------------- report
def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> str:
    with contextlib.suppress(OSError, AttributeError):
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    return "n/a"


def usable_cores() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def folder_or_temp(path: str | None, prefix: str) -> Iterator[Path]:
    if path:
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)


def print_breakdown(orig: dict[str, float], cached: dict[str, float], img_size: int) -> None:
    print(f"\nWhere the time goes (one epoch in this process, mean ms per image, {img_size} px):")
    print("| stage | originals ms/img | cache ms/img |")
    print("|---|---:|---:|")
    for name in orig:
        label = "read (JPEG decode / cache row)" if name == "read" else name
        print(f"| {label} | {orig[name]:.2f} | {cached[name]:.2f} |")
    print(f"| **sum** | {sum(orig.values()):.2f} | {sum(cached.values()):.2f} |")

    resize = next(name for name in orig if name.startswith("Resize"))
    tail = ("ToTensor", "Normalize", "collate")
    groups = {
        "decode+resize": ("read", resize),
        "augmentation": tuple(n for n in orig if n not in ("read", resize, *tail)),
        "tensor+normalize": ("ToTensor", "Normalize"),
        "collate": ("collate",),
    }
    print("\n| group | originals ms/img (share) | cache ms/img (share) |")
    print("|---|---:|---:|")
    for group, names in groups.items():
        a = sum(orig[n] for n in names)
        b = sum(cached[n] for n in names)
        print(
            f"| {group} | {a:.2f} ({a / sum(orig.values()):.0%}) "
            f"| {b:.2f} ({b / sum(cached.values()):.0%}) |"
        )
    floor = sum(cached.values()) - sum(cached[n] for n in groups["decode+resize"])
    print(
        f"\nEven with a free read and resize, the rest of the pipeline costs {floor:.2f} ms/img, "
        f"so the in-process speed-up is capped at {sum(orig.values()) / floor:.2f}x."
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--img-size", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    parser.add_argument("--data-dir", help="keep the JPEGs here (reused when already written)")
    parser.add_argument("--cache-dir", help="cache root (must not be inside --data-dir)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    print("# Data loading: original JPEGs vs decoded cache (train pipeline)")
    print(
        f"CPU {cpu_name()}, {os.cpu_count()} cores ({usable_cores()} usable), "
        f"load average {load_average()} at start"
    )
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, PIL {PIL.__version__} "
        f"(libjpeg-turbo {features.check_feature('libjpeg_turbo')}), numpy {np.__version__}; "
        f"torch threads {torch.get_num_threads()} (DataLoader workers use 1)"
    )

    with (
        folder_or_temp(args.data_dir, "cass-bench-jpegs-") as data_dir,
        folder_or_temp(args.cache_dir, "cass-bench-cache-") as cache_dir,
    ):
        t0 = time.perf_counter()
        keys = prepare_images(data_dir, args.images, args.width, args.height)
        made = time.perf_counter() - t0
        mean_kb = statistics.mean((data_dir / k).stat().st_size for k in keys) / 1024
        print(
            f"{len(keys)} JPEGs {args.width}x{args.height} q{JPEG_QUALITY} "
            f"(mean {mean_kb:.0f} KiB) in {data_dir} (ready in {made:.1f} s); "
            f"train transform paper_train_transform({args.img_size}), "
            f"batch {args.batch_size}, 2 epochs per measurement, median of {args.repeats}"
        )
        index = SampleIndex(
            name="bench",
            root=data_dir,
            keys=keys,
            targets=np.zeros(len(keys), dtype=np.int64),
            classes=["image"],
            reader=FileReader(data_dir),
        )
        t0 = time.perf_counter()
        cache = build_cache(index, cache_dir, args.img_size)
        built = time.perf_counter() - t0
        size_mb = (cache.folder / "images.u8").stat().st_size / 2**20
        how = "built" if cache.built else "reused (nothing decoded)"
        print(
            f"cache {how} in {built:.1f} s ({len(keys) / built:.1f} images/s, in-process), "
            f"{size_mb:.0f} MiB at {args.img_size} px: {cache.folder}"
        )

        transform = paper_train_transform(args.img_size)
        sources = {"originals": index.reader, "cache": cache.reader()}
        configs = [(source, w) for w in args.workers for source in sources]
        rates: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        for repeat in range(args.repeats):
            shift = repeat % len(configs)
            for source, workers in configs[shift:] + configs[:shift]:
                dataset = ReaderDataset(sources[source], keys, transform)
                rate = loader_rate(dataset, args.batch_size, workers, seed=SEED + repeat)
                rates[(source, workers)].append(rate)

        where = local_device("cpu")  # the loaders run on this machine's CPU
        print("\n| source | workers | images/s | vs originals (same workers) | device |")
        print("|---|---:|---:|---:|---|")
        median = {c: statistics.median(r) for c, r in rates.items()}
        for source, workers in configs:
            value = median[(source, workers)]
            ratio = value / median[("originals", workers)]
            print(f"| {source} | {workers} | {value:.1f} | {ratio:.2f}x | {where} |")
        spreads = ", ".join(
            f"{source}/{workers}: {min(rates[(source, workers)]):.1f}-"
            f"{max(rates[(source, workers)]):.1f}"
            for source, workers in configs
        )
        print(f"\nimages/s range over repeats (source/workers): {spreads}")

        orig_stages = stage_times(index.reader, keys, transform, args.batch_size)
        cache_stages = stage_times(cache.reader(), keys, transform, args.batch_size)
        print_breakdown(orig_stages, cache_stages, args.img_size)

    print(
        f"\nload average {load_average()} at the end; total {time.perf_counter() - started:.0f} s"
    )
    if 0 in args.workers:
        speedup = median[("cache", 0)] / median[("originals", 0)]
        print(f"cache vs originals, 0 workers: {speedup:.2f} (target >= 3) on {local_device()}")
    else:
        print("cache vs originals, 0 workers: n/a (0 workers not measured) (target >= 3)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
