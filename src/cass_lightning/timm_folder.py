"""One exported model as the folder timm and the Hugging Face Hub read themselves.

``config.json`` (architecture, ``model_args``, ``num_classes``, ``pretrained_cfg`` with the
input size, mean/std, interpolation and crop; label names for a classifier), ``model.safetensors``
and ``README.md`` (the model card), so a colleague without this package loads it with::

    timm.create_model("local-dir:<folder>", pretrained=True)   # or "hf-hub:<org>/<name>"

The config comes from timm's own writer (the one ``timm.models.push_to_hf_hub`` uses), cleaned
of what described timm's ImageNet weights rather than ours (their tag, licence and origin).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save as safetensors_bytes
from timm.models._hub import save_config_for_hf
from torch import nn

from cass_lightning.io import atomic_write_bytes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
TIMM_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)
#: ``pretrained_cfg`` keys that describe the ImageNet weights timm knows the architecture by;
#: ours are other weights, so they must not inherit that tag, licence or origin.
FOREIGN_KEYS = ("tag", "license", "origin_url", "paper_ids", "paper_name", "notes",
                "hf_hub_id", "hf_hub_filename", "url", "file", "source")  # fmt: skip
#: How our transforms feed an image: resized to the square input size (no crop), bilinear.
RESIZE = {"interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"}


def contiguous_state(module: nn.Module, where: str = "the model to export") -> dict[str, Any]:
    """The module's exact state, on the CPU and contiguous (safetensors refuses strided views,
    e.g. channels_last weights); refused, naming ``where``, when a tensor holds NaN or inf
    (before anything is written)."""
    from cass_lightning.weights import check_finite_state

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    check_finite_state(state, where)
    return state


def timm_folder_name(arm: str) -> str:
    """``timm-<arm>``: the folder of one arm inside an export."""
    return f"timm-{arm}"


def hub_repo_for(repo: str | None, arm: str, arms: int) -> str | None:
    """The Hub repository of one arm: ``repo`` itself, or ``<repo>-<arm>`` when the export
    holds several arms (timm loads one model per repository, from its root)."""
    if not repo:
        return None
    return repo if arms == 1 else f"{repo}-{arm}"


def data_config(img_size: int, in_chans: int, mean: list[float], std: list[float]) -> dict:
    """The preprocessing the weights were trained with, in timm's terms."""
    return {"input_size": (int(in_chans), int(img_size), int(img_size)),
            "mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std),
            **RESIZE}  # fmt: skip


def timm_config(
    model: nn.Module, data: dict[str, Any], label_names: list[str] | None, scratch: Path
) -> dict[str, Any]:
    """``config.json`` of ``model`` as timm writes it, with our preprocessing and labels."""
    extra = {"label_names": list(label_names)} if label_names else None
    path = scratch / CONFIG_FILE
    save_config_for_hf(model, str(path), model_config=extra, data_config=data)
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in FOREIGN_KEYS:
        config["pretrained_cfg"].pop(key, None)
    return config


def write_timm_folder(
    model: nn.Module,
    folder: str | Path,
    data: dict[str, Any],
    card: str,
    label_names: list[str] | None = None,
) -> Path:
    """Write ``model`` (its exact ``state_dict``), its ``config.json`` and the model card to
    ``folder``; return it.

    Built in a hidden sibling folder and renamed into place, so ``folder`` either holds all
    three files or does not exist; an existing ``folder`` is refused (never overwritten).
    """
    out = Path(folder)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another export folder")
    scratch = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    scratch.mkdir(parents=True)
    try:
        config = timm_config(model, data, label_names, scratch)
        atomic_write_bytes(scratch / WEIGHTS_FILE, safetensors_bytes(contiguous_state(model)))
        atomic_write_bytes(scratch / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
        atomic_write_bytes(scratch / CARD_FILE, card.encode("utf-8"))
        os.rename(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)  # only the scratch folder made above
        raise
    return out


def read_timm_config(folder: str | Path) -> dict[str, Any]:
    """A timm folder's ``config.json``."""
    return json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
