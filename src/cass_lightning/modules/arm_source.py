"""Where one arm's starting weights come from: the ``weights`` argument parsed and read once.

``weights=`` (cass-finetune, ``ClassifierModule``) names an export folder, a CASS checkpoint or
a baseline (``imagenet``, ``random``). :func:`parse_weights` tells which, :func:`read_arm_source`
reads what that source says about one arm (timm name, the size and normalisation it was trained
with, the method that trained it) before any data or model is built, and
:func:`build_backbone` loads it (strict for the backbone; only the head is new). Kept out of the
LightningModule file so the app and the module read weights by one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from cass_lightning.checks import check_choice
from cass_lightning.encoders import create_timm_model
from cass_lightning.export import META_FILE, arm_meta, load_backbone, read_meta
from cass_lightning.modules.cass import CASSModule
from cass_lightning.modules.legacy import stored_hparams
from cass_lightning.modules.registry import get_method, recorded_method
from cass_lightning.records import check_backbone_meta, check_pretraining_hparams

ARMS = ("cnn", "vit")
INITS = ("export", "checkpoint", "imagenet", "random")
#: The paper's backbones, used for ``imagenet``/``random`` when no ``timm_name`` is given.
PAPER_BACKBONES: dict[str, str] = {"cnn": "resnet50", "vit": "vit_base_patch16_384"}


def parse_weights(weights: Any, weights_file: str | None) -> tuple[str, str | None]:
    """``(init, path)`` from the ``weights`` setting: an export folder, a CASS ``.ckpt`` or
    ``imagenet`` (with ``weights_file``, if any) / ``random``."""
    if weights is None or str(weights).strip() == "":
        raise ValueError(
            "set weights=<export folder> | <CASS checkpoint .ckpt> | imagenet | random "
            "(e.g. weights=runs/pretrain/<run>/export)"
        )
    text = str(weights)
    if text == "random":
        return "random", None
    if text == "imagenet":
        return "imagenet", weights_file
    if text.endswith(".ckpt"):
        return "checkpoint", text
    return "export", text


@dataclass(frozen=True)
class ArmSource:
    """Where one arm's starting weights come from, read once: what to build and how to feed it.

    ``img_size`` and ``mean``/``std`` are what the weights were trained with (``None`` where the
    source does not say, e.g. ``random``): the fine-tuning data must follow them.
    """

    arm: str
    init: str
    weights: str | None
    timm_name: str
    img_size: int | None
    in_chans: int
    method: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    meta: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def _existing(weights: str | Path | None, what: str, want_dir: bool) -> Path:
    if weights is None:
        raise ValueError(f"weights must name the {what} for this init, got None")
    path = Path(weights).expanduser()
    ok = path.is_dir() if want_dir else path.is_file()
    if not ok:
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _tuple(values: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def read_arm_source(
    arm: str,
    init: str,
    weights: str | Path | None,
    timm_name: str | None = None,
    img_size: int | None = None,
    in_chans: int = 3,
) -> ArmSource:
    """Read what an export folder, a pretraining checkpoint or a baseline says about ``arm``.

    ``timm_name`` and ``img_size``, when given, must agree with pretrained weights (a ViT's size
    cannot change; a CNN is size-agnostic and keeps the pretraining size unless one is given).
    """
    check_choice("arm", arm, ARMS)
    check_choice("init", init, INITS)
    if init in ("imagenet", "random"):
        name = timm_name or PAPER_BACKBONES[arm]
        return ArmSource(arm, init, None if weights is None else str(weights), name, img_size,
                         in_chans, init)  # fmt: skip
    if init == "export":
        folder = _existing(weights, "export folder", want_dir=True)
        meta = check_backbone_meta(read_meta(folder), folder / META_FILE)
        entry = arm_meta(folder, arm, meta)
        vit_size = (meta.get("vit") or {}).get("img_size")  # exports made before img_size
        trained_at = meta.get("img_size") or entry.get("img_size") or vit_size
        name, chans, method = entry["timm_name"], entry["in_chans"], recorded_method(meta)
        mean, std = meta.get("mean"), meta.get("std")
    else:
        path = _existing(weights, "CASS checkpoint", want_dir=False)
        try:
            stored = stored_hparams(path)
        except Exception as err:
            raise ValueError(f"{path} is not a readable CASS checkpoint: {err}") from err
        # checked before any of it is used: a string here could reach the data's config
        hp = check_pretraining_hparams(stored, path, arm)
        name, trained_at, chans = hp[arm], hp["img_size"], hp.get("in_chans", 3)
        method = recorded_method(hp)
        if method != CASSModule.method:
            raise ValueError(
                f"{path} is a {get_method(method).label} checkpoint; export it with cass-export "
                "and fine-tune the export folder (weights=<export>)"
            )
        mean, std, meta = hp.get("mean"), hp.get("std"), None
    if timm_name is not None and timm_name != name:
        raise ValueError(
            f"timm_name={timm_name!r} but the {arm} arm in {weights} is {name!r}; leave "
            "timm_name unset for pretrained weights"
        )
    if arm == "vit" and img_size is not None and trained_at is not None and img_size != trained_at:
        raise ValueError(
            f"img_size={img_size} but the ViT in {weights} was pretrained at {trained_at}; the "
            "model (and data) img_size must follow the weights"
        )
    size = img_size if arm == "cnn" and img_size is not None else trained_at
    return ArmSource(arm, init, str(weights), name, size, chans, str(method), _tuple(mean),
                     _tuple(std), meta)  # fmt: skip


def build_backbone(source: ArmSource, num_classes: int) -> nn.Module:
    """The initialised timm model of ``source`` with a fresh ``num_classes`` head."""
    if source.init == "export":
        model = load_backbone(source.weights, source.arm, num_classes, meta=source.meta)
    elif source.init == "checkpoint":
        model = _checkpoint_arm(Path(str(source.weights)), source.arm)
    else:
        model = create_timm_model(
            source.timm_name,
            pretrained=source.init == "imagenet",
            weights_file=source.weights if source.init == "imagenet" else None,
            num_classes=num_classes,
            img_size=source.img_size,
            in_chans=source.in_chans,
        )
    model.reset_classifier(num_classes)  # a fresh head even when the file had one of this width
    return model


def _checkpoint_arm(path: Path, arm: str) -> nn.Module:
    """One arm of a CASS checkpoint, rebuilt without any ImageNet weights."""
    try:
        cass = CASSModule.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, pretrained=False,
            cnn_weights_file=None, vit_weights_file=None,
        )  # fmt: skip
    except Exception as err:
        raise ValueError(f"could not load the CASS checkpoint {path}: {err}") from err
    return getattr(cass, arm)
