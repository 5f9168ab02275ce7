"""``cass-predict``: a fine-tuned classifier applied to new images.

    cass-predict classifier=runs/finetune/<run> images=/data/new_scans
    cass-predict classifier=runs/finetune/<run>/export-best-epoch007 images=list.csv
    cass-predict classifier=<run> data=brain_mri data.root=/data/brain_mri split=test maps=true

``classifier`` is a fine-tuning run folder (its best checkpoint, else ``last.ckpt``), a checkpoint,
or a classifier export (folder or ``.safetensors``). Images come from ``images=<folder>``
(recursive; class subfolders are read as true labels when they are the model's classes),
``images=<csv>`` (a ``path`` column, an optional ``label`` column) or ``data=<layout>`` (any
dataset layout, its ``split``). The preprocessing is the model's own (size, mean/std), never
typed here.

The run folder (``runs/predict/<date_time>``, or ``output=<folder>``, which must be new or
empty) gets ``predictions.csv`` (path, predicted class, one probability per class, the true
label where known, an ``error`` for an image that could not be read) and ``predictions.json``
(the model and its weights' SHA-256, classes, preprocessing, counts, and the metrics where the
labels are the model's classes). Exit codes as the other apps: 0 done, 1 a refused input
(named), 2 a usage error, 130/143 after SIGINT/SIGTERM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn

from cass_lightning.apps.export import RESULTS_FILE, SPLIT_KEYS, load_classifier_checkpoint
from cass_lightning.apps.run.common import CONFIG_DIR, run_dir, save_run_config
from cass_lightning.apps.run.console import entry_point, hold_run_folder, reported_errors
from cass_lightning.apps.run.runfolder import LOCK_FILE
from cass_lightning.checks import check_choice
from cass_lightning.data.loaders import resolve_workers
from cass_lightning.export import META_FILE, load_classifier
from cass_lightning.io import atomic_write_json, file_sha256, read_json, write_csv
from cass_lightning.prediction import (
    ImageSet,
    csv_images,
    folder_images,
    judge_labels,
    predict_logits,
    predicted_labels,
    prediction_loader,
    probabilities,
    score,
)
from cass_lightning.records import plain_floats, plain_int

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
MAPS_DIR = "maps"
LOG_FILE = "predict.log"
KEPT = (PREDICTIONS_CSV, PREDICTIONS_JSON, MAPS_DIR)
SPLITS = ("train", "val", "test", "all")
PRECISIONS = ("auto", "32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------- the model
def run_checkpoint(run: Path) -> Path:
    """A fine-tuning run's best checkpoint (the one its ``results.json`` names, else the only
    ``best-*.ckpt``), else its ``last.ckpt``."""
    results = run / RESULTS_FILE
    if results.is_file():
        named = (read_json(results, "fine-tuning results.json") or {}).get("best_checkpoint")
        # a path read from a file: taken only when it lies in this run's own folder
        if isinstance(named, str) and _inside(Path(named), run) and Path(named).is_file():
            return Path(named)
    folder = run / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"))
    if len(best) == 1:
        return best[0]
    if len(best) > 1:
        raise ValueError(
            f"{folder} holds {len(best)} best-*.ckpt files and no {RESULTS_FILE} names one; "
            "give the checkpoint itself (classifier=<run>/checkpoints/<file>.ckpt)"
        )
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(
        f"{run} is neither a fine-tuning run folder (no checkpoints/best-*.ckpt or last.ckpt) "
        f"nor a classifier export (no {META_FILE})"
    )


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def load_model(spec: Any) -> tuple[nn.Module, dict[str, Any], Path, str]:
    """``(timm model in eval mode, export-style meta, weights file, kind)`` for ``classifier=``."""
    if spec is None or str(spec).strip() == "":
        raise ValueError(
            "set classifier=<fine-tuning run folder> | <checkpoint .ckpt> | <classifier export>"
        )
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"classifier not found: {path}")
    if path.suffix == ".safetensors" or (path / META_FILE).is_file():
        model, meta, file = load_classifier(path)
        return model, meta, file, "export"
    kind = "checkpoint" if path.is_file() else "run"
    file = path if path.is_file() else run_checkpoint(path)
    module, meta = load_classifier_checkpoint(file)
    return module.backbone.eval(), meta, file, kind


# ----------------------------------------------------------------------------- the images
def dataset_images(cfg: DictConfig, meta: dict[str, Any], split: str) -> tuple[ImageSet, bool]:
    """The ``split`` of a dataset layout (``data=<layout>``), read as training reads it, and
    whether the splits are the distribution's own (else drawn from the ``data.*`` settings)."""
    with open_dict(cfg):
        data = cfg.data
        # numbers only (the meta was checked as read): OmegaConf resolves any string given here
        data.img_size = plain_int(meta["img_size"], "img_size of the classifier")
        data.mean = plain_floats(meta["mean"], "mean of the classifier")
        data.std = plain_floats(meta["std"], "std of the classifier")
        data.train_views = "paper"
    dm = instantiate(data, _convert_="all")
    dm.prepare_data()
    dm.setup("predict")
    indices = np.arange(len(dm.index)) if split == "all" else dm.split_indices(split)
    if not len(indices):
        raise ValueError(f"{dm.root} has no {split} split; choose split=train|val|test|all")
    index = dm.index
    keys = [index.keys[i] for i in indices]
    if index.multi_label:
        labels = [tuple(index.classes[c] for c in np.flatnonzero(index.targets[i]))
                  for i in indices]  # fmt: skip
    else:
        labels = [(index.classes[int(index.targets[i])],) for i in indices]
    state = judge_labels([c for lab in labels for c in lab], meta["classes"], "dataset")
    found = ImageSet(keys, [index.reader.describe(k) for k in keys], labels, state, index.reader)
    return found, index.splits is not None


def split_note(data: Any, meta: dict[str, Any], split: str, official: bool) -> str | None:
    """A note when the dataset the classifier was fine-tuned on is split otherwise here (drawn
    with other ``data.*`` settings), so ``split=test`` may hold images it trained on; ``None``
    when the splits agree, are the distribution's own, or the data is another dataset."""
    trained = meta.get("data_splits") or {}
    if split == "all" or official or not trained:
        return None
    if trained.get("layout") != data.get("layout"):
        return None
    if Path(str(trained.get("root"))).resolve() != Path(str(data.get("root"))).resolve():
        return None
    differ = [f"{k}={data.get(k)} (fine-tuned with {trained.get(k)})" for k in SPLIT_KEYS[2:]
              if data.get(k) != trained.get(k)]  # fmt: skip
    if not differ:
        return None
    return (f"the {split} split is not the fine-tuning run's: " + ", ".join(differ) +
            "; set those data.* keys as the run had them")  # fmt: skip


def read_images(cfg: DictConfig, meta: dict[str, Any]) -> tuple[ImageSet, dict[str, Any]]:
    """The images of ``images=`` (folder or CSV) or ``data=``, and how they were given."""
    images, data = cfg.get("images"), cfg.get("data")
    if (images is None) == (data is None):
        raise ValueError(
            "give the images with images=<folder or .csv> or data=<layout> data.root=<folder>"
            + (" (not both)" if images is not None else "")
        )
    split = str(cfg.get("split", "test"))
    check_choice("split", split, SPLITS)
    if data is not None:
        found, official = dataset_images(cfg, meta, split)
        note = split_note(data, meta, split, official)
        if note:
            print(f"Warning: {note}")
        source = {"kind": "data", "layout": data.get("layout", "synthetic"),
                  "root": str(data.get("root")), "split": split, "split_note": note}  # fmt: skip
    else:
        if not str(images).strip():
            raise ValueError("images= is empty; give a folder or a .csv (images=<path>)")
        path = Path(str(images)).expanduser()
        if path.suffix.lower() == ".csv":
            found = csv_images(path, meta["classes"])
            source = {"kind": "csv", "path": str(path.resolve())}
        else:
            found = folder_images(path, meta["classes"])
            source = {"kind": "folder", "path": str(path.resolve())}
    if not meta["multi_label"] and found.labels_state.state == "scored":
        several = [p for p, lab in zip(found.paths, found.labels, strict=True) if len(lab) > 1]
        if several:
            raise ValueError(
                f"{several[0]} has several labels but the model is single-label (multi-class)"
            )
    return found, source


# ----------------------------------------------------------------------------- the run
def device_and_autocast(device: str, precision: str) -> tuple[torch.device, torch.dtype | None]:
    """The device, and bf16 autocast on CUDA where it is supported (``precision=auto``)."""
    check_choice("device", device, DEVICES)
    check_choice("precision", precision, PRECISIONS)
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError("device=cuda but no CUDA device is available; use device=auto or cpu")
    target = torch.device("cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu")
    bf16 = target.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and target.type == "cuda" and not bf16:
        raise ValueError("precision=bf16 but this GPU does not support bfloat16; use 32")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16)
    return target, torch.bfloat16 if use_bf16 else None


def progress_bar(enabled: bool) -> Any:
    """A tqdm bar over the batches (off with ``progress=false``)."""

    def wrap(batches: Iterator[Any], total: int) -> Iterator[Any]:
        from tqdm.auto import tqdm

        return iter(tqdm(batches, total=total, desc="predicting", unit="batch"))

    return wrap if enabled else None


def check_output(folder: Path) -> None:
    """The run folder must be new or empty (besides the lock and the empty log file Hydra's
    job logging opens there before the task starts)."""
    if folder.is_dir():
        ours = (LOCK_FILE, LOG_FILE)
        found = sorted(
            p.name
            for p in folder.iterdir()
            if p.name not in ours or (p.name == LOG_FILE and p.stat().st_size > 0)
        )
        if found:
            raise FileExistsError(
                f"{folder} is not empty ({', '.join(found[:5])}); cass-predict writes only into "
                "a new or empty folder: choose another output="
            )


def write_maps(
    model: nn.Module,
    meta: dict[str, Any],
    images: ImageSet,
    predicted: np.ndarray,
    errors: list[str],
    count: int,
    device: torch.device,
    folder: Path,
) -> list[str]:
    """Grad-CAM (CNN) or last-block attention (ViT) over the first ``count`` readable images,
    each saved as ``maps/<n>_<name>.png`` (the image and its map side by side)."""
    from PIL import Image

    from cass_lightning.data.transforms import eval_transform
    from cass_lightning.maps import cnn_gradcam, overlay_grid, vit_attention_map

    chosen = [i for i, e in enumerate(errors) if not e][: max(0, int(count))]
    if not chosen:
        return []
    transform = eval_transform(meta["img_size"], meta["mean"], meta["std"])
    batch = torch.stack([transform(images.reader(images.keys[i])) for i in chosen]).to(device)
    model = model.float()
    if meta["arm"] == "vit":
        maps = vit_attention_map(model, batch)
    else:
        maps = cnn_gradcam(model, batch, target=[int(predicted[i]) for i in chosen])
    out = folder / MAPS_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for n, i in enumerate(chosen):
        grid = overlay_grid(batch[n : n + 1].cpu(), [maps[n : n + 1]], meta["mean"], meta["std"])
        name = f"{n:03d}_{Path(images.paths[i]).stem}.png"
        Image.fromarray(grid).save(out / name)
        written.append(f"{MAPS_DIR}/{name}")
    return written


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Load the model, read the images, predict, write ``predictions.csv``/``.json``; return
    what ``predictions.json`` holds."""
    folder = run_dir(cfg)
    check_output(folder)
    model, meta, weights, kind = load_model(cfg.get("classifier"))
    if int(meta["in_chans"]) != 3:
        raise ValueError(f"the model takes {meta['in_chans']} channels; images are read as RGB")
    with hold_run_folder(folder, LOG_FILE, KEPT):
        return _predict(cfg, folder, model, meta, weights, kind)


def _predict(
    cfg: DictConfig, folder: Path, model: nn.Module, meta: dict[str, Any], weights: Path, kind: str
) -> dict[str, Any]:
    save_run_config(folder, cfg)
    images, source = read_images(cfg, meta)
    labels_state = images.labels_state
    if labels_state.note:
        print(labels_state.note)
    device, autocast = device_and_autocast(str(cfg.device), str(cfg.precision))
    model = model.to(device)
    loader = prediction_loader(
        images, meta["img_size"], meta["mean"], meta["std"], int(cfg.batch_size),
        resolve_workers(int(cfg.num_workers)), pin_memory=device.type == "cuda",
    )  # fmt: skip
    started = time.perf_counter()
    logits, errors = predict_logits(model, loader, device, autocast,
                                    progress_bar(bool(cfg.get("progress", True))))  # fmt: skip
    seconds = time.perf_counter() - started
    classes, multi = list(meta["classes"]), bool(meta["multi_label"])
    threshold = meta.get("threshold") if multi else None
    probs = probabilities(logits, multi)
    names = predicted_labels(probs, classes, multi, threshold)
    has_labels = labels_state.state != "none"
    scored = labels_state.state == "scored"  # labels that are not the model's are not shown
    header = ["path", "predicted", *(f"prob_{c}" for c in classes)]
    header += ["label"] if has_labels else []
    header += ["error"]
    rows = []
    for i, path in enumerate(images.paths):
        cells = ["" if np.isnan(p) else round(float(p), 6) for p in probs[i]]
        row = [path, names[i], *cells]
        row += ["|".join(images.labels[i]) if scored else ""] if has_labels else []
        rows.append([*row, errors[i]])
    write_csv(folder / PREDICTIONS_CSV, header, rows)
    metrics = score(logits, images.labels, classes, multi) if scored else None
    unreadable = [p for p, e in zip(images.paths, errors, strict=True) if e]
    maps: list[str] = []
    if bool(cfg.get("maps", False)):
        top = np.nan_to_num(logits, nan=-np.inf).argmax(axis=1)
        maps = write_maps(model, meta, images, top, errors, int(cfg.maps_count), device, folder)
    result: dict[str, Any] = {
        "model": {
            "given": str(cfg.classifier), "kind": kind, "weights_file": str(weights.resolve()),
            "method": meta.get("method"), "arm": meta["arm"], "timm_name": meta["timm_name"],
            "label_fraction": meta.get("label_fraction"), "seed": meta.get("seed"),
            "test_metrics": meta.get("test_metrics"),
        },
        "weights_sha256": file_sha256(weights),
        "classes": classes,
        "multi_label": multi,
        "threshold": threshold,
        "probabilities": "sigmoid per class" if multi else "softmax over the classes",
        "preprocessing": {"img_size": meta["img_size"], "in_chans": meta["in_chans"],
                          "mean": meta["mean"], "std": meta["std"],
                          "resize": "to img_size x img_size, no crop"},
        "input": source,
        "labels": {"state": labels_state.state, "found": labels_state.found,
                   "note": labels_state.note},
        "counts": {
            "images": len(images), "predicted": len(images) - len(unreadable),
            "unreadable": len(unreadable),
            "labelled": sum(1 for lab in images.labels if lab) if scored else 0,
            "skipped": {why: len(paths) for why, paths in images.skipped.items()},
            "per_predicted_class": {c: sum(1 for n in names if c in n.split("|"))
                                    for c in classes},
        },
        "unreadable": unreadable,
        "skipped": images.skipped,
        "metrics": metrics,
        "maps": maps,
        "device": str(device),
        "precision": "bf16-autocast" if autocast is not None else "32",
        "seconds": round(seconds, 3),
    }  # fmt: skip
    atomic_write_json(folder / PREDICTIONS_JSON, result)
    _report(folder, result)
    return result


def _report(folder: Path, result: dict[str, Any]) -> None:
    counts, metrics = result["counts"], result["metrics"]
    lines = [
        f"predicted {counts['predicted']} of {counts['images']} images with the "
        f"{result['model']['arm']} classifier ({result['model']['timm_name']})",
        f"  predictions: {folder / PREDICTIONS_CSV}",
        f"  summary:     {folder / PREDICTIONS_JSON}",
    ]
    if counts["unreadable"]:
        lines.append(f"  unreadable:  {counts['unreadable']} (named in the error column)")
    for why, count in counts["skipped"].items():
        lines.append(f"  skipped:     {count} {why} (listed in {PREDICTIONS_JSON})")
    if result["labels"]["note"]:
        lines.append(f"  {result['labels']['note']}")
    for key in ("acc", "balanced_acc", "f1_macro", "f1_micro", "exact_match"):
        if metrics and metrics.get(key) is not None:
            lines.append(f"  {key}: {metrics[key]:.4f}")
    print("\n".join(lines))


@entry_point  # a command line Hydra cannot compose exits 2
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    """Console entry point. Exit codes: 0 done, 1 refused input (named), 2 usage error,
    130/143 stopped by a signal."""
    with reported_errors():
        predict(cfg)


if __name__ == "__main__":
    main()
