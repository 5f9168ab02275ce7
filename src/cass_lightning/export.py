"""Export both arms as plain timm weights: ``cnn.safetensors``, ``vit.safetensors``, ``meta.json``.

The backbone files hold exactly ``model.state_dict()`` of the timm model, so plain timm reloads
them with a strict key match::

    n = meta[arm]["num_classes"]
    timm.create_model(name, pretrained=True, num_classes=n,
                      pretrained_cfg_overlay=dict(file=path, num_classes=n))

(naming ``num_classes`` in the overlay stops timm from discarding a classifier whose width
differs from ImageNet's 1000).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import timm
from safetensors.torch import load_file, save_file
from torch import nn

from cass_lightning import __version__

ARMS = ("cnn", "vit")
META_FILE = "meta.json"


def contiguous_state(module: nn.Module) -> dict[str, Any]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def export_backbones(model: Any, out_dir: str | Path, source: str | None = None) -> Path:
    """Write both arms of a :class:`CASSModule` into ``out_dir`` and return the folder.

    Refuses to write into a folder that already holds an export: exports are never overwritten.
    Files are written under temporary names and renamed, so a crash never leaves a half file.
    """
    out = Path(out_dir)
    existing = [n for n in (*(f"{a}.safetensors" for a in ARMS), META_FILE) if (out / n).exists()]
    if existing:
        raise FileExistsError(
            f"{out} already holds an export ({', '.join(existing)}); choose another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    hp = model.hparams
    meta: dict[str, Any] = {
        "format": "cass-lightning-export/1",
        "cass_lightning_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "head": hp.head,
        "head_dim": hp.head_dim,
        "mean": list(hp.mean),
        "std": list(hp.std),
    }
    specs = model.specs()
    for arm in ARMS:
        backbone: nn.Module = getattr(model, arm)
        head: nn.Module = getattr(model, f"{arm}_head")
        entry = asdict(specs[arm]) | {"file": f"{arm}.safetensors", "projector_file": None}
        atomic_save(contiguous_state(backbone), out / entry["file"])
        if any(True for _ in head.parameters()):
            entry["projector_file"] = f"{arm}_projector.safetensors"
            atomic_save(contiguous_state(head), out / entry["projector_file"])
        meta[arm] = entry
    atomic_write_text(json.dumps(meta, indent=2), out / META_FILE)
    return out


def atomic_save(state: dict[str, Any], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_meta(export_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of an export, with a clear error when the folder is not one."""
    path = Path(export_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {export_dir} is not a cass-lightning export "
            "(expected cnn.safetensors, vit.safetensors and meta.json)"
        )
    return json.loads(path.read_text())


def load_backbone(export_dir: str | Path, arm: str, num_classes: int | None = None) -> nn.Module:
    """Rebuild one exported arm with plain timm (strict key match when the head is kept).

    ``num_classes`` other than the exported one gives a fresh classifier of that width, as
    timm does for any pretrained file (the fine-tuning use).
    """
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    meta = read_meta(export_dir)[arm]
    file = Path(export_dir) / meta["file"]
    kwargs: dict[str, Any] = {"in_chans": meta["in_chans"]}
    if meta["img_size"] is not None:
        kwargs["img_size"] = meta["img_size"]
    keep_head = num_classes is None or num_classes == meta["num_classes"]
    model = timm.create_model(
        meta["timm_name"], pretrained=False, num_classes=meta["num_classes"], **kwargs
    )
    model.load_state_dict(load_file(str(file)), strict=True)
    if not keep_head:
        model.reset_classifier(num_classes)
    return model
