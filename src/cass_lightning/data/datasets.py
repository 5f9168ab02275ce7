"""A small, strict ImageFolder dataset: `<root>/<class>/<image>`, always yielding RGB."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import functional as TF

DEFAULT_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Bring any common PIL mode to 8-bit RGB.

    16-bit/32-bit integer images are rescaled from 0..65535 (PIL's own conversion clips them to
    255, turning most medical greyscale scans white). Palette images with transparency go via
    RGBA so PIL does not warn; alpha is then dropped.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        scaled = np.round(np.clip(values, 0.0, 65535.0) / 257.0).astype(np.uint8)
        image = Image.fromarray(scaled)  # uint8 2-D -> "L"
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB, or raise an OSError that names the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except Exception as exc:
        raise OSError(f"could not read image {path}: {exc}") from exc


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class ImageFolderDataset(Dataset):
    """Images in `<root>/<class>/<image>` (sub-folders of a class are included).

    Class indices follow sorted class-folder names, so the same folders always give the same
    labels. Hidden files and folders are skipped. Items are `(image_tensor, label)`; without a
    transform the image is a float tensor in [0, 1] of shape (3, H, W).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.extensions = tuple(ext.lower() for ext in extensions)
        layout = (
            f"expected the layout {self.root}/<class>/<image> with extensions {self.extensions}"
        )
        if not self.root.exists():
            raise FileNotFoundError(f"dataset root {self.root} does not exist ({layout})")
        if not self.root.is_dir():
            raise NotADirectoryError(f"dataset root {self.root} is not a directory ({layout})")

        self.classes: list[str] = sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not _is_hidden(entry.name)
        )
        if not self.classes:
            raise ValueError(f"dataset root {self.root} has no class folders; {layout}")
        self.class_to_idx: dict[str, int] = {name: i for i, name in enumerate(self.classes)}

        self.samples: list[tuple[str, int]] = []
        empty: list[str] = []
        for name in self.classes:
            files = self._scan(self.root / name)
            if not files:
                empty.append(name)
            self.samples.extend((path, self.class_to_idx[name]) for path in files)
        if not self.samples:
            raise ValueError(f"dataset root {self.root} has class folders but no images; {layout}")
        if empty:
            # A silently missing class would shift every later label index.
            raise ValueError(
                f"dataset root {self.root}: class folder(s) {empty} contain no images; "
                f"{layout}. Remove the empty folders or add images."
            )
        self.targets: list[int] = [label for _, label in self.samples]

    def _scan(self, class_dir: Path) -> list[str]:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
            for filename in sorted(filenames):
                if not _is_hidden(filename) and filename.lower().endswith(self.extensions):
                    found.append(os.path.join(dirpath, filename))
        return found

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        tensor = self.transform(image) if self.transform is not None else TF.to_tensor(image)
        return tensor, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"classes={len(self.classes)})"
        )
