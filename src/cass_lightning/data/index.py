"""The index of a dataset: every sample's key, labels and official split, plus how to read it.

Every on-disk layout (ISIC-2019, Brain-MRI, Dermofit, Autoimmune, MedMNIST, folders, CSVs) is
turned into one :class:`SampleIndex`; splitting, label fractions, validation, caching and the
datamodule then work on that one shape, whatever the layout.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageFile, ImageOps

from cass_lightning.walk import is_regular

SPLITS = ("train", "val", "test")
#: Formats Pillow registers but can only identify, not decode (or only with outside programs).
_IDENTIFY_ONLY = frozenset({"MPEG", "EPS"})


def _readable_extensions() -> tuple[str, ...]:
    """Every file ending Pillow can open and decode on its own, sorted.

    Stub formats (HDF5, GRIB, BUFR: they need a handler registered by the user) and formats
    Pillow can only identify are left out, so a video or a PostScript file beside the images
    is counted as ignored rather than failing as unreadable.
    """
    found = []
    for ext, fmt in Image.registered_extensions().items():
        factory = Image.OPEN.get(fmt, (None,))[0]
        if factory is None or fmt in _IDENTIFY_ONLY:
            continue
        if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
            continue
        found.append(ext.lower())
    return tuple(sorted(set(found)))


#: File endings read as images by the folder layouts (matched case-insensitively): every format
#: Pillow reads (PNG, JPEG, BMP, TIFF, WebP, GIF, ...). Animated files give their first frame.
IMAGE_EXTENSIONS: tuple[str, ...] = _readable_extensions()
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: The EXIF tag saying how a camera held the picture; values 5-8 swap width and height.
EXIF_ORIENTATION = 0x0112


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
    elif image.mode == "F":
        image = Image.fromarray(_float_to_bytes(np.asarray(image, dtype=np.float64)))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _float_to_bytes(values: np.ndarray) -> np.ndarray:
    """A float image (32-bit TIFF) as 8-bit: values in 0..1 (the usual scale of float scans)
    times 255, values in 0..255 as they are; any other range (or NaN/inf) has no one meaning,
    so it is refused by name rather than clipped to black or white."""
    finite = np.isfinite(values).all()
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not finite or low < 0.0 or high > 255.0:
        shown = "NaN or inf values" if not finite else f"values {low:g}..{high:g}"
        raise ValueError(
            f"a floating-point image with {shown}: only 0..1 or 0..255 can be read as "
            "brightness; convert it to 8- or 16-bit"
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return np.round(values * scale).astype(np.uint8)


#: How every :class:`ImageTooLarge` message starts.
TOO_LARGE = "image too large: "


class ImageTooLarge(ValueError, OSError):
    """An image whose header claims more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``
    (a decompression bomb, or a scan far larger than training needs): refused by name rather
    than decoded into many gigabytes. A ``ValueError`` (a refused input) and an ``OSError``
    (an unreadable image), so both kinds of handler see it.

    PyTorch re-raises an error from a DataLoader worker as the same type with the worker's
    traceback as its message; only the named line is kept, so the app still prints one line.
    """

    def __init__(self, message: str) -> None:
        start = message.rfind(TOO_LARGE)
        super().__init__(message[start:].strip() if start > 0 else message)


def _bomb_size(exc: BaseException) -> tuple[int, int] | None:
    """The ``(width, height)`` the refused header claimed, read from the frame of Pillow's
    ``open`` that checked it (``None`` when that frame is not found: the message then gives
    the pixel count Pillow reported)."""
    tb = exc.__traceback__
    while tb is not None:
        found = tb.tb_frame.f_code.co_name == "_open_core"
        image = tb.tb_frame.f_locals.get("im") if found else None
        size = getattr(image, "size", None)
        if isinstance(size, tuple) and len(size) == 2:
            return size
        tb = tb.tb_next
    return None


def _too_large(path: str | Path, exc: BaseException) -> ImageTooLarge:
    limit = Image.MAX_IMAGE_PIXELS
    size = _bomb_size(exc)
    if size is not None:
        claimed = f"{size[0]} x {size[1]} pixels"
    else:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f"{found.group(1)} pixels" if found else "too many pixels"
    return ImageTooLarge(
        f"{TOO_LARGE}{path} ({claimed}, over the limit of {limit}); Pillow refuses to "
        "decode it (a decompression bomb or an oversized scan): resize it or leave it out"
    )


@contextmanager
def open_image(path: str | Path) -> Iterator[ImageFile.ImageFile]:
    """``Image.open(path)``, with an image over ``Image.MAX_IMAGE_PIXELS`` refused as
    :class:`ImageTooLarge` (Pillow only warns up to twice the limit; here both refuse). A path
    that is not a regular file (a FIFO or a device named like an image) is refused before it is
    opened: reading one blocks, or never ends."""
    if isinstance(path, (str, os.PathLike)) and os.path.exists(path) and not is_regular(path):
        raise OSError(f"{path} is not a regular file (a folder, FIFO, device or socket)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(path, exc) from None
    with image:
        yield image


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as upright RGB, or raise an OSError that names the file
    (:class:`ImageTooLarge` for one over Pillow's pixel limit).

    Phones and dermoscopes store pixels as the sensor saw them and an EXIF orientation tag
    saying how to turn them; the pixels are turned here, so the model sees what a viewer shows.
    Animated files (GIF, WebP, APNG) give their first frame.
    """
    try:
        with open_image(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as exc:  # a later frame or tile over the limit
        raise _too_large(path, exc) from None
    except Exception as exc:
        raise OSError(f"could not read image {path}: {exc}") from exc


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as shown after the EXIF orientation (headers only, no decoding).

    Pillow reads a PNG's EXIF by decoding the whole image when no ``eXIf`` chunk came before
    the pixel data; such a PNG (the PNG specification puts ``eXIf`` before the pixels) is taken
    as unrotated here, so a header check stays a header check."""
    width, height = image.size
    if image.format == "PNG" and "exif" not in image.info:
        return width, height
    try:
        turned = image.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:  # a broken EXIF block: the pixels decide, as load_rgb will see
        turned = False
    return (height, width) if turned else (width, height)


class ImageReader(Protocol):
    """Reads one sample by key as an RGB PIL image, and fingerprints it for the cache."""

    def __call__(self, key: str) -> Image.Image: ...

    def describe(self, key: str) -> str:
        """Where the sample lives, for error messages (a file path, or array and row)."""
        ...

    def fingerprint(self, key: str) -> str:
        """Changes whenever the sample's bytes may have changed (size and mtime for files)."""
        ...


@dataclass(frozen=True)
class FileReader:
    """Keys are paths relative to ``root``; images open through :func:`load_rgb`."""

    root: Path

    def __call__(self, key: str) -> Image.Image:
        return load_rgb(self.root / key)

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def fingerprint(self, key: str) -> str:
        stat = os.stat(self.root / key)
        return f"{stat.st_size}-{stat.st_mtime_ns}"


@dataclass
class SampleIndex:
    """All samples of one dataset.

    Attributes:
        name: the layout's name (``isic2019``, ``brain_mri``, ...).
        root: the dataset root the keys are relative to (never written to).
        keys: one key per sample (a relative file path for files).
        targets: ``(N,)`` int64 class indices, or ``(N, C)`` float32 multi-hot for multi-label.
        classes: class names; ``targets`` index into this list.
        splits: the official split of each sample (``train``/``val``/``test``) or ``None`` where
            the distribution has none (then seeded stratified splits are made).
        reader: reads a key as an RGB image.
        skipped: ``(where, why)`` for entries the layout reader dropped under ``on_bad_file=skip``.
        skipped_meta: ``where -> (official split or None, labels)`` of those entries where the
            layout knows them, so the datamodule can say which classes lost images.
        ignored: files a folder layout passed over as not images, counted by extension
            (``{".txt": 3}``), so a format left out is visible rather than silent.
    """

    name: str
    root: Path
    keys: list[str]
    targets: np.ndarray
    classes: list[str]
    reader: ImageReader
    splits: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_meta: dict[str, tuple[str | None, tuple[str, ...]]] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        if len(self.targets) != n:
            raise ValueError(f"{self.name}: {n} keys but {len(self.targets)} targets")
        if self.splits is not None and len(self.splits) != n:
            raise ValueError(f"{self.name}: {n} keys but {len(self.splits)} split entries")
        if self.multi_label and self.targets.shape[1] != len(self.classes):
            raise ValueError(
                f"{self.name}: multi-hot targets have {self.targets.shape[1]} columns "
                f"for {len(self.classes)} classes"
            )

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def multi_label(self) -> bool:
        return self.targets.ndim == 2

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def stratum(self) -> np.ndarray:
        """One integer per sample to stratify on: the class, or for multi-label data the
        rarest positive label (a sample without labels gets its own stratum)."""
        if not self.multi_label:
            return self.targets.astype(np.int64)
        counts = self.targets.sum(axis=0)
        rarity = np.where(self.targets > 0, counts[None, :], np.inf)
        strata = np.argmin(rarity, axis=1).astype(np.int64)
        strata[~(self.targets > 0).any(axis=1)] = self.num_classes
        return strata

    def class_counts(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Samples per class (positives per label for multi-label data)."""
        targets = self.targets if indices is None else self.targets[np.asarray(indices, int)]
        if self.multi_label:
            return (targets > 0).sum(axis=0).astype(np.int64)
        return np.bincount(targets.astype(np.int64), minlength=self.num_classes)
