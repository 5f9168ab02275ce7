"""A seeded, synthetic "medical-like" image set written to disk in ImageFolder layout.

Real data is not always at hand (CI, smoke tests, quick demos), yet the pipeline should still
exercise the real file-reading path and learn something non-trivial. Each class is a different
shape or texture drawn on a skin/tissue-like background; colour, position, scale, rotation and
noise are random per image, and the amount of "ink" is drawn from the same distribution for every
class, so classes differ by structure rather than by mean colour.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cass_lightning.io import read_json

# Sorted, so position in this tuple equals the label ImageFolderDataset assigns.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "cell_cluster",
    "fibres",
    "irregular_lesion",
    "ring_lesion",
    "round_lesion",
    "speckled",
)
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_SPLIT_CODES = {"train": 0, "val": 1}

# Background tones (RGB in [0, 1]): light skin, tan skin, pink tissue, pale H&E-like purple.
_TONES = np.array(
    [
        [0.93, 0.80, 0.72],
        [0.80, 0.62, 0.50],
        [0.90, 0.70, 0.74],
        [0.86, 0.76, 0.88],
    ]
)
# Pigments for lesions/structures: dark brown, haematoxylin purple, dark red, blue-grey.
_PIGMENTS = np.array(
    [
        [0.36, 0.22, 0.15],
        [0.33, 0.20, 0.45],
        [0.48, 0.16, 0.22],
        [0.28, 0.28, 0.40],
    ]
)

Grid = tuple[np.ndarray, np.ndarray]


def _soft_step(x: np.ndarray, edge: float) -> np.ndarray:
    """Smooth 0→1 transition at x = 0 of width ~edge; tanh form cannot overflow."""
    return 0.5 * (1.0 + np.tanh(x / (2.0 * edge)))


def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """Linear-interpolation weights mapping `cells` control points onto `size` pixels."""
    pos = np.linspace(0.0, cells - 1.0, size)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = pos - lo
    weights = np.zeros((size, cells))
    weights[np.arange(size), lo] = 1.0 - frac
    weights[np.arange(size), lo + 1] = frac
    return weights


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    weights = _interp_matrix(size, cells)
    return weights @ rng.uniform(-1.0, 1.0, (cells, cells)) @ weights.T


def _local_frame(rng: np.random.Generator, grid: Grid, spread: float) -> Grid:
    """Coordinates relative to a random centre, rotated by a random angle."""
    yy, xx = grid
    cy, cx = rng.uniform(-spread, spread, 2)
    theta = rng.uniform(0.0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    return u, v


def _round_lesion(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """A filled, gently mottled ellipse with a soft border."""
    u, v = _local_frame(rng, grid, 0.35)
    radius = rng.uniform(0.25, 0.42)
    aspect = rng.uniform(0.75, 1.0)
    dist = np.sqrt((u / radius) ** 2 + (v / (radius * aspect)) ** 2)
    mottling = 0.85 + 0.15 * _smooth_noise(rng, size, 5)
    return _soft_step(1.0 - dist, rng.uniform(0.06, 0.12)) * mottling


def _irregular_lesion(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """A blob whose border wobbles with several angular harmonics, with blotchy pigment."""
    u, v = _local_frame(rng, grid, 0.3)
    radius = rng.uniform(0.25, 0.4)
    phi = np.arctan2(v, u)
    wobble = np.ones_like(phi)
    for k in range(2, 8):
        wobble += rng.uniform(0.04, 0.13) * np.cos(k * phi + rng.uniform(0.0, 2.0 * np.pi))
    dist = np.hypot(u, v) / (radius * wobble)
    blotches = 0.65 + 0.35 * _smooth_noise(rng, size, 8)
    return _soft_step(1.0 - dist, rng.uniform(0.03, 0.07)) * blotches


def _ring_lesion(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """An annulus: dark rim, pale centre."""
    u, v = _local_frame(rng, grid, 0.3)
    radius = rng.uniform(0.3, 0.5)
    aspect = rng.uniform(0.8, 1.0)
    dist = np.sqrt((u / radius) ** 2 + (v / (radius * aspect)) ** 2)
    half_width = rng.uniform(0.1, 0.18)
    return _soft_step(half_width - np.abs(dist - 1.0), rng.uniform(0.03, 0.06))


def _cell_cluster(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """A loose cluster of small round cells, each with a paler core."""
    yy, xx = grid
    count = int(rng.integers(12, 26))
    centre = rng.uniform(-0.3, 0.3, 2)
    spread = rng.uniform(0.2, 0.32)
    cy, cx = (centre[:, None] + rng.normal(0.0, spread, (2, count)))[..., None, None]
    radii = rng.uniform(0.045, 0.08, count)[:, None, None]
    # Distance to the nearest cell, in units of that cell's radius.
    dist = np.sqrt((((yy - cy) ** 2 + (xx - cx) ** 2) / radii**2).min(axis=0))
    return _soft_step(1.0 - dist, 0.15) * (1.0 - 0.4 * _soft_step(0.45 - dist, 0.1))


def _fibres(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """Thin, roughly parallel wavy strands crossing the field."""
    u, v = _local_frame(rng, grid, 0.2)
    freq = rng.uniform(3.0, 5.0)
    warp = rng.uniform(0.8, 1.6) * _smooth_noise(rng, size, 4)
    phase = 2.0 * np.pi * freq * v + warp + 0.5 * np.sin(rng.uniform(2.0, 4.0) * u)
    strands = _soft_step(np.cos(phase) - rng.uniform(0.7, 0.85), 0.08)
    return strands * (0.75 + 0.25 * _smooth_noise(rng, size, 6))


def _speckled(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """Many tiny dots scattered over the field, slightly blurred."""
    count = int(rng.uniform(0.025, 0.05) * size * size)
    field = np.zeros((size, size))
    rows = rng.integers(0, size, count)
    cols = rng.integers(0, size, count)
    field[rows, cols] = rng.uniform(0.7, 1.0, count)
    kernel = np.array([0.25, 0.5, 0.25])
    for axis in (0, 1):
        field = (
            kernel[0] * np.roll(field, 1, axis)
            + kernel[1] * field
            + kernel[2] * np.roll(field, -1, axis)
        )
    return np.clip(field * 2.5, 0.0, 1.0)


_DRAWERS: dict[str, Callable[[np.random.Generator, Grid, int], np.ndarray]] = {
    "cell_cluster": _cell_cluster,
    "fibres": _fibres,
    "irregular_lesion": _irregular_lesion,
    "ring_lesion": _ring_lesion,
    "round_lesion": _round_lesion,
    "speckled": _speckled,
}


def _background(rng: np.random.Generator, grid: Grid, size: int) -> np.ndarray:
    """Skin/tissue-like field: a random tone, uneven lighting, faint texture, vignetting."""
    yy, xx = grid
    mix = rng.dirichlet(np.ones(len(_TONES)))
    tone = mix @ _TONES + rng.uniform(-0.04, 0.04, 3)
    lighting = 1.0 + 0.07 * _smooth_noise(rng, size, 3)
    lighting -= rng.uniform(0.0, 0.2) * (yy**2 + xx**2) / 2.0
    texture = 0.03 * _smooth_noise(rng, size, 16)
    return tone * lighting[..., None] + texture[..., None]


def render_synthetic_image(class_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image of `class_name` as a (size, size, 3) uint8 array."""
    if class_name not in _DRAWERS:
        raise ValueError(
            f"unknown synthetic class {class_name!r}; expected one of {SYNTHETIC_CLASSES}"
        )
    axis = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    grid = (yy, xx)
    background = _background(rng, grid, size)
    mask = _DRAWERS[class_name](rng, grid, size)
    # Same ink distribution for every class: faint big shapes and strong small ones average out,
    # so the mean colour of an image says little about its class.
    target_ink = rng.uniform(0.05, 0.12)
    alpha = np.clip(target_ink / max(float(mask.mean()), 1e-6), 0.35, 1.0)
    ink = (alpha * mask)[..., None]
    pigment = rng.dirichlet(np.ones(len(_PIGMENTS))) @ _PIGMENTS * rng.uniform(0.6, 1.3)
    image = background * (1.0 - ink) + pigment * ink
    image += rng.normal(0.0, rng.uniform(0.005, 0.025), image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _params(
    images_per_class: int, val_images_per_class: int, image_size: int, seed: int
) -> dict[str, int]:
    checks = {
        "images_per_class": (images_per_class, 1),
        "val_images_per_class": (val_images_per_class, 0),
        "image_size": (image_size, 8),
        "seed": (seed, 0),
    }
    for name, (value, minimum) in checks.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return {
        "images_per_class": images_per_class,
        "val_images_per_class": val_images_per_class,
        "image_size": image_size,
        "seed": seed,
    }


def _folder_name(params: dict[str, int]) -> str:
    return (
        f"synthetic-n{params['images_per_class']}-v{params['val_images_per_class']}"
        f"-s{params['image_size']}-seed{params['seed']}"
    )


def _manifest(params: dict[str, int]) -> dict[str, Any]:
    counts = {
        "train": params["images_per_class"],
        "val": params["val_images_per_class"],
    }
    return {
        "format_version": FORMAT_VERSION,
        "generator": "cass_lightning.data.synthetic",
        "params": params,
        "classes": list(SYNTHETIC_CLASSES),
        "counts": {
            split: {name: n for name in SYNTHETIC_CLASSES} for split, n in counts.items() if n > 0
        },
    }


def _check_existing(folder: Path, params: dict[str, int]) -> None:
    """Accept `folder` only if its manifest says it is exactly the dataset we would write."""
    manifest_path = folder / MANIFEST_NAME
    hint = "Move or delete it yourself, or pass a different root."
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists but is not a directory. {hint}")
    try:
        manifest = read_json(manifest_path, "synthetic dataset manifest")  # plain, bounded
    except FileNotFoundError:
        raise FileExistsError(
            f"{folder} exists but has no {MANIFEST_NAME}, so it is not a complete synthetic "
            f"dataset. It was left untouched. {hint}"
        ) from None
    except (OSError, ValueError) as exc:
        raise FileExistsError(f"{manifest_path} could not be read ({exc}). {hint}") from exc
    expected = _manifest(params)
    keys = ("format_version", "params", "classes")
    if not isinstance(manifest, dict) or any(manifest.get(k) != expected[k] for k in keys):
        raise FileExistsError(
            f"{manifest_path} does not match the requested dataset (expected "
            f"format_version={FORMAT_VERSION}, params={params}). {hint}"
        )


def _write_images(folder: Path, params: dict[str, int]) -> None:
    size = params["image_size"]
    splits = {"train": params["images_per_class"], "val": params["val_images_per_class"]}
    for split, count in splits.items():
        if count == 0:
            continue
        for class_idx, class_name in enumerate(SYNTHETIC_CLASSES):
            class_dir = folder / split / class_name
            class_dir.mkdir(parents=True)
            for index in range(count):
                # One independent stream per image: images do not depend on the set's size.
                rng = np.random.default_rng([params["seed"], _SPLIT_CODES[split], class_idx, index])
                pixels = render_synthetic_image(class_name, size, rng)
                Image.fromarray(pixels).save(
                    class_dir / f"{class_name}_{index:05d}.png", format="PNG"
                )


def write_synthetic_dataset(
    root: str | Path,
    *,
    images_per_class: int = 100,
    val_images_per_class: int = 20,
    image_size: int = 96,
    seed: int = 77,
) -> Path:
    """Write (once) and return `<root>/synthetic-<key>/{train,val}/<class>/<class>_<i>.png`.

    The folder name encodes every parameter, so different settings never collide. Images are
    written into a temporary sibling and renamed into place at the end, so an interrupted run
    never leaves a folder that looks complete. An existing folder is reused only when its
    manifest matches; anything else there is reported, never deleted or overwritten.
    """
    params = _params(images_per_class, val_images_per_class, image_size, seed)
    root = Path(root)
    target = root / _folder_name(params)
    if target.exists():
        _check_existing(target, params)
        return target

    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        _write_images(partial, params)
        manifest_text = json.dumps(_manifest(params), indent=2, sort_keys=True) + "\n"
        (partial / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")
        try:
            os.rename(partial, target)
        except OSError:
            if not target.exists():
                raise
            # Another process (e.g. a second rank) finished first; keep its copy if it matches.
            _check_existing(target, params)
            shutil.rmtree(partial)
    except BaseException:
        # Only our own temporary folder is removed; `target` is never touched here.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
