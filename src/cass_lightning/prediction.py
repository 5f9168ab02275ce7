"""A fine-tuned classifier applied to images: which images (a folder, a CSV, a dataset split),
a loader that names an unreadable file instead of stopping, the scores and the metrics.

What the model was trained with decides the preprocessing (size, mean/std); the caller never
types it. Labels are scored only when they are the model's own classes: a folder whose class
subfolders are other names is told apart from a folder without labels (:class:`Labels`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cass_lightning.data.index import IMAGE_EXTENSIONS, SPLITS, load_rgb
from cass_lightning.data.transforms import eval_transform
from cass_lightning.modules.metrics import PerClassBreakdown, build_metrics
from cass_lightning.walk import walk_files


@dataclass
class Labels:
    """What the input's labels are and whether they can be scored against the model."""

    state: str
    found: list[str] = field(default_factory=list)
    note: str | None = None


@dataclass
class ImageSet:
    """The images to predict: ``keys`` read through ``reader``, shown as ``paths``, each with
    its label names (an empty tuple: none known)."""

    keys: list[str]
    paths: list[str]
    labels: list[tuple[str, ...]]
    labels_state: Labels
    reader: Callable[[str], Image.Image] = load_rgb
    #: What a folder walk did not list, by why: ``{"link loops": [...], "not regular files": ...}``
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def _names(values: Sequence[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}"


def judge_labels(found: Sequence[str], classes: Sequence[str], where: str) -> Labels:
    """``scored`` when every label found is one of ``classes``; ``none`` when there are none;
    else ``foreign``, with the note the console and ``predictions.json`` show."""
    found = sorted(set(found))
    if not found:
        return Labels("none", [], f"no labels in {where}: predictions only")
    if set(found) <= set(classes):
        return Labels("scored", found)
    return Labels(
        "foreign",
        found,
        f"labels not scored: {where} classes {_names(found)} are not the model's classes "
        f"{_names(classes)}",
    )


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def folder_images(root: str | Path, classes: Sequence[str]) -> ImageSet:
    """Every image file under ``root`` (recursive, sorted). The first folder level below
    ``root`` (below ``train``/``val``/``test`` where those are the only folders) is read as the
    true class of the images inside it; images directly in ``root`` have no label."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    walk = walk_files(root, _is_image)
    files = walk.files
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    parts = [f.relative_to(root).parts for f in files]
    tops = {p[0] for p in parts if len(p) > 1}
    skip = 1 if tops and tops <= set(SPLITS) else 0
    labels = [(p[skip],) if len(p) > 1 + skip else () for p in parts]
    state = judge_labels([lab[0] for lab in labels if lab], classes, "folder")
    if state.state == "none":
        labels = [() for _ in labels]
    keys = [str(f) for f in files]
    skipped = {"link loops": [str(p) for p in walk.loops],
               "not regular files": [str(p) for p in walk.special]}  # fmt: skip
    return ImageSet(keys, keys, labels, state, skipped={k: v for k, v in skipped.items() if v})


def csv_images(file: str | Path, classes: Sequence[str], separator: str = "|") -> ImageSet:
    """The images a CSV lists: a ``path`` column (relative to the CSV's folder, or absolute)
    and an optional ``label`` column (several labels joined by ``separator``)."""
    file = Path(file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"image CSV not found: {file}")
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        if "path" not in header:
            raise ValueError(f"{file} has no 'path' column (its columns: {', '.join(header)})")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise ValueError(f"{file} lists no images")
    keys, labels = [], []
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise ValueError(f"{file} line {line}: empty path")
        path = Path(row["path"]).expanduser()
        keys.append(str(path if path.is_absolute() else file.parent / path))
        cell = row.get("label", "")
        labels.append(tuple(s.strip() for s in cell.split(separator) if s.strip()))
    state = judge_labels([name for lab in labels for name in lab], classes, "CSV")
    if state.state == "none":
        labels = [() for _ in labels]
    return ImageSet(keys, [row["path"] for row in rows], labels, state)


class PredictionDataset(Dataset):
    """``{"image", "index", "error"}`` per image; an image that cannot be read or transformed
    gives a zero tensor and its error text (never an exception that would stop the run)."""

    def __init__(self, images: ImageSet, transform: Any, shape: tuple[int, int, int]) -> None:
        self.images, self.transform, self.shape = images, transform, shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image = self.transform(self.images.reader(self.images.keys[i]))
            error = ""
        except Exception as err:  # an unreadable file is a result, named in the output
            image, error = torch.zeros(self.shape), str(err).strip() or type(err).__name__
        return {"image": image, "index": i, "error": error}


def prediction_loader(
    images: ImageSet,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """Batches of the model's own preprocessing (resize to ``img_size``, ``mean``/``std``)."""
    transform = eval_transform(img_size, mean, std)
    dataset = PredictionDataset(images, transform, (len(mean), img_size, img_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory)  # fmt: skip


def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[Iterator[Any], int], Iterator[Any]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``(logits (N, C) float32, NaN for unreadable images; error text per image, "" if
    none)``, under ``torch.inference_mode`` and, when given, autocast to ``autocast_dtype``."""
    count = len(loader.dataset)  # type: ignore[arg-type]
    logits: np.ndarray | None = None
    errors = [""] * count
    batches: Iterator[Any] = iter(loader)
    if progress is not None:
        batches = progress(batches, len(loader))
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            index = batch["index"].tolist()
            ok = [i for i, e in enumerate(batch["error"]) if not e]
            for i, e in zip(index, batch["error"], strict=True):
                errors[i] = e
            if not ok:
                continue
            images = batch["image"][ok].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):  # fmt: skip
                out = model(images)
            out = out.float().cpu().numpy()
            if logits is None:
                logits = np.full((count, out.shape[1]), np.nan, dtype=np.float32)
            logits[[index[i] for i in ok]] = out
    if logits is None:  # nothing readable: the width is the model's
        width = int(getattr(model, "num_classes", 0) or 0)
        logits = np.full((count, width), np.nan, dtype=np.float32)
    return logits, errors


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Softmax over the classes (multi-class) or one sigmoid per class (multi-label)."""
    values = torch.from_numpy(logits)
    probs = torch.sigmoid(values) if multi_label else values.softmax(dim=-1)
    return probs.numpy()


def predicted_labels(
    probs: np.ndarray, classes: Sequence[str], multi_label: bool, threshold: float | None
) -> list[str]:
    """The top class (multi-class) or every class at or above ``threshold`` joined by ``|``
    (multi-label); ``""`` for an unreadable image."""
    out = []
    for row in probs:
        if np.isnan(row).any():
            out.append("")
        elif multi_label:
            out.append("|".join(c for c, p in zip(classes, row, strict=True) if p >= threshold))
        else:
            out.append(classes[int(row.argmax())])
    return out


def score(
    logits: np.ndarray, labels: list[tuple[str, ...]], classes: Sequence[str], multi_label: bool
) -> dict[str, Any] | None:
    """The fine-tuning metrics (``cass_lightning.modules.metrics``) over the readable images
    with a label, per class too; ``None`` when none has one."""
    rows = [i for i, lab in enumerate(labels) if lab and not np.isnan(logits[i]).any()]
    if not rows:
        return None
    position = {c: k for k, c in enumerate(classes)}
    if multi_label:
        targets = torch.zeros(len(rows), len(classes), dtype=torch.long)
        for r, i in enumerate(rows):
            targets[r, [position[c] for c in labels[i]]] = 1
    else:
        targets = torch.tensor([position[labels[i][0]] for i in rows])
    values = torch.from_numpy(logits[rows])
    metrics, per_class = (
        build_metrics(multi_label, len(classes)),
        PerClassBreakdown(multi_label, len(classes)),
    )
    metrics.update(values, targets)
    per_class.update(values, targets)
    averaged = {k: _finite(v) for k, v in metrics.compute().items()}
    breakdown = per_class.compute() or {}
    table = breakdown.get("per_class") or {"f1": [], "support": []}
    return {
        "images": len(rows),
        **averaged,
        "per_class": {
            c: {"f1": f, "support": s}
            for c, f, s in zip(classes, table["f1"], table["support"], strict=True)
        },
        "confusion": breakdown.get("confusion"),
    }


def _finite(value: Tensor) -> float | None:
    number = float(value)
    return number if np.isfinite(number) else None
