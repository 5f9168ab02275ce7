"""Tiny copies of each real dataset distribution's on-disk layout, for the tests.

File names, folder names and CSV headers are those of the real distributions; images are a few
pixels so every fixture is written in milliseconds.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cass_lightning.data.layouts import ISIC_CLASSES, ISIC_HEADER

ISIC_INPUT = "ISIC_2019_Training_Input"
ISIC_CSV = "ISIC_2019_Training_GroundTruth.csv"
BRAIN_CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
BRAIN_PREFIX = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}


def image(path: Path, mode: str = "RGB", size: tuple[int, int] = (12, 10), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), np.uint8)
    Image.fromarray(pixels if channels == 3 else pixels[..., 0]).save(path)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: any write under the root changes it."""
    found = {".": (0, os.stat(root).st_mtime_ns)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


def isic_row(image: str, label: str, unk: str = "0.0") -> str:
    cells = ["1.0" if name == label else "0.0" for name in ISIC_CLASSES]
    return ",".join([image, *cells, unk])


def isic(root: Path, rows: list[str] | None = None, header: str | None = None) -> Path:
    """The challenge distribution: one image per class, the licence files, a downsampled copy."""
    images = root / ISIC_INPUT
    if rows is None:
        rows = [isic_row(f"ISIC_{i:07d}", name) for i, name in enumerate(ISIC_CLASSES)]
    for i in range(len(ISIC_CLASSES)):
        image(images / f"ISIC_{i:07d}.jpg", seed=i)
    image(images / "ISIC_0000000_downsampled.jpg")
    image(images / "ISIC_9999999.jpg")  # an image the CSV does not list
    (images / "ATTRIBUTION.txt").write_text("attribution")
    (images / "LICENSE.txt").write_text("CC-BY-NC")
    lines = [header or ",".join(ISIC_HEADER), *rows]
    (root / ISIC_CSV).write_text("\n".join(lines) + "\n")
    return root


def brain(root: Path, per_class: int = 2) -> Path:
    """Kaggle's Training/ and Testing/ folders of grayscale JPEGs of mixed sizes."""
    for folder, prefix in (("Training", "Tr"), ("Testing", "Te")):
        for c, name in enumerate(BRAIN_CLASSES):
            for i in range(per_class):
                file = root / folder / name / f"{prefix}-{BRAIN_PREFIX[name]}_{10 + i:04d}.jpg"
                image(file, mode="L", size=(8 + 4 * i, 10 + 2 * c), seed=c * 10 + i)
    return root


def dermofit(root: Path) -> Path:
    """`<class>/<lesion_id>/<lesion_id>.png`, with masks beside some images."""
    for cls, lesions in {"AK": ["A5"], "BCC": ["B123", "B124"], "MEL": ["M1"]}.items():
        for lesion in lesions:
            image(root / cls / lesion / f"{lesion}.png")
    image(root / "BCC" / "B123" / "B123mask.png", mode="L")
    image(root / "MEL" / "M1" / "M1mask.png", mode="L")
    return root


def autoimmune(root: Path, rows: list[tuple[str, str]] | None = None, image_dir: str = "") -> Path:
    rows = rows or [
        ("b001.png", "['DM', 'PM']"),
        ("b002.png", '["IBM"]'),
        ("b003.png", "[]"),
        ("b004.png", "DM|NORMAL"),
        ("b005.png", "PM; IBM"),
    ]
    for i, (file, _) in enumerate(rows):
        image(root / image_dir / file, seed=i)
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return root


def npz(
    root: Path, file: str, rgb: bool = False, labels: np.ndarray | None = None, **drop: bool
) -> Path:
    """A MedMNIST archive saved like the originals: six arrays, uint8 images."""
    rng = np.random.default_rng(0)
    counts = {"train": 4, "val": 2, "test": 3}
    arrays: dict[str, np.ndarray] = {}
    for split, n in counts.items():
        shape = (n, 8, 8, 3) if rgb else (n, 8, 8)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (
            np.arange(n, dtype=np.uint8).reshape(n, 1) % 3 if labels is None else labels[:n]
        )
    for key in drop:
        arrays.pop(key)
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / file, **arrays)
    return root / file
