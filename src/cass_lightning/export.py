"""Export trained arms as plain timm weights: ``<arm>.safetensors`` files and ``meta.json``.

The backbone files hold exactly ``model.state_dict()`` of the timm model, so plain timm reloads
them with a strict key match::

    n = meta[arm]["num_classes"]
    timm.create_model(name, pretrained=True, num_classes=n,
                      pretrained_cfg_overlay=dict(file=path, num_classes=n))

(naming ``num_classes`` in the overlay stops timm from discarding a classifier whose width
differs from ImageNet's 1000). CASS exports both arms; DINO the one arm it trained. Every module
says what it exports through ``exportable()``, so one writer serves them all.

Each arm's entry also says what pretraining started from (``init``: the weights file or hub
entry, its SHA-256, the keys loaded and adapted; ``{"init": "random"}`` without one), and
:func:`load_backbone` records the export file it read in the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import timm
from safetensors.torch import save as safetensors_bytes
from torch import nn

from cass_lightning.checks import check_choice
from cass_lightning.encoders import EncoderSpec
from cass_lightning.io import (
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    read_json,
    utc_timestamp,
)
from cass_lightning.model_card import model_card
from cass_lightning.records import check_backbone_meta, check_classifier_meta
from cass_lightning.timm_folder import (
    contiguous_state,
    data_config,
    hub_repo_for,
    timm_folder_name,
    write_timm_folder,
)
from cass_lightning.weights import load_weights, read_state_dict, record_of

ARMS = ("cnn", "vit")
META_FILE = "meta.json"
EXPORT_FORMAT = "cass-lightning-export/1"
#: ``meta.json``'s ``kind`` for a fine-tuned classifier (backbone exports have no ``kind``).
CLASSIFIER_KIND = "classifier"
#: What a classifier export's ``meta.json`` must hold to rebuild and feed the model.
CLASSIFIER_FIELDS = ("arm", "timm_name", "img_size", "in_chans", "mean", "std", "classes",
                     "multi_label", "threshold")  # fmt: skip

try:
    PACKAGE_VERSION = version("cass-lightning")
except PackageNotFoundError:  # run from a source tree that was never installed
    PACKAGE_VERSION = "unknown"


@dataclass
class ExportedArm:
    """One arm to write: its timm backbone, the optional projector after it, and its spec."""

    spec: EncoderSpec
    backbone: nn.Module
    projector: nn.Module | None = None


class Exportable(Protocol):
    """What a module offers to :func:`export_module`."""

    def exportable(self) -> tuple[dict[str, ExportedArm], dict[str, Any]]:
        """The arms to write, and the ``meta.json`` fields that describe the whole export."""
        ...


def weights_init(arms: dict[str, ExportedArm]) -> dict[str, dict[str, Any]]:
    """What each arm's backbone was initialised from (its ``weights_record``)."""
    return {arm: record_of(exported.backbone) for arm, exported in arms.items()}


def export_backbones(
    arms: dict[str, ExportedArm],
    out_dir: str | Path,
    meta: dict[str, Any],
    source: str | None = None,
    init: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> Path:
    """Write ``<arm>.safetensors`` (and ``<arm>_projector.safetensors``) and the timm folder
    ``timm-<arm>/`` per arm, then ``meta.json``, into ``out_dir``; return the folder.

    ``init`` (arm -> record) says what pretraining started from when the backbones no longer
    carry it (an export from a checkpoint); by default each backbone's own record.
    ``context`` is what the model cards tell beyond the weights (:func:`training_context`:
    data, settings, device; ``results``: fine-tuning results that evaluated these weights) and
    is kept in ``meta.json`` as ``training``.

    Refuses a folder that already holds any of these files: exports are never overwritten.
    Each file is written atomically and ``meta.json`` last, so a folder with a ``meta.json`` is
    a complete export.
    """
    unknown = sorted(set(arms) - set(ARMS))
    if not arms or unknown:
        raise ValueError(f"export arms must be among {ARMS}, got {sorted(arms)}")
    out = Path(out_dir)
    names = [META_FILE, *(f"{a}.safetensors" for a in arms), *(f"{a}_projector.safetensors"
             for a in arms), *(timm_folder_name(a) for a in arms)]  # fmt: skip
    existing = [n for n in names if (out / n).exists()]
    if existing:
        raise FileExistsError(
            f"{out} already holds an export ({', '.join(existing)}); choose another folder"
        )
    states = {arm: contiguous_state(exported.backbone, f"the {arm} backbone to export")
              for arm, exported in arms.items()}  # fmt: skip
    projectors = {arm: contiguous_state(exported.projector, f"the {arm} projector to export")
                  for arm, exported in arms.items() if exported.projector is not None}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    full: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "cass_lightning_version": PACKAGE_VERSION,
        "created": utc_timestamp(),
        "source": source,
        **meta,
        "training": {k: v for k, v in (context or {}).items() if k not in ("results", "repo")},
    }
    records = weights_init(arms) | (init or {})
    for arm, exported in arms.items():
        entry = asdict(exported.spec) | {"file": f"{arm}.safetensors", "projector_file": None}
        entry["init"] = records[arm]
        atomic_write_bytes(out / entry["file"], safetensors_bytes(states[arm]))
        if exported.projector is not None and any(True for _ in exported.projector.parameters()):
            entry["projector_file"] = f"{arm}_projector.safetensors"
            atomic_write_bytes(out / entry["projector_file"], safetensors_bytes(projectors[arm]))
        entry["timm_folder"] = timm_folder_name(arm)
        sha = file_sha256(out / entry["file"])
        evaluated = [r for r in (context or {}).get("results") or [] if evaluated_with(r, sha)]
        repo = hub_repo_for((context or {}).get("repo"), arm, len(arms))
        told = {**(context or {}), "results": evaluated, "repo": repo}
        card = model_card(_card_info("backbone", arm, entry, full, told))
        data = data_config(_size(entry, full), entry["in_chans"], full["mean"], full["std"])
        write_timm_folder(exported.backbone, out / entry["timm_folder"], data, card)
        full[arm] = entry
    atomic_write_json(out / META_FILE, full)
    return out


def evaluated_with(result: dict[str, Any], sha256: str) -> bool:
    """Whether a fine-tuning ``results.json`` started from the weights file with ``sha256``."""
    loaded = result.get("weights_loaded")
    return isinstance(loaded, dict) and loaded.get("sha256") == sha256


def _size(entry: dict[str, Any], meta: dict[str, Any]) -> int:
    """The input size the arm was trained at (a CNN's spec has none: the run's)."""
    return int(entry.get("img_size") or meta["img_size"])


def _card_info(
    kind: str,
    arm: str,
    entry: dict[str, Any],
    meta: dict[str, Any],
    context: dict[str, Any] | None,
) -> dict[str, Any]:
    """What :func:`cass_lightning.model_card.model_card` shows of one exported model."""
    context = context or {}
    return {
        "kind": kind, "arm": arm, "method": meta.get("method"),
        "timm_name": entry["timm_name"], "img_size": _size(entry, meta),
        "mean": meta.get("mean"), "std": meta.get("std"),
        "num_classes": entry.get("num_classes"), "num_features": entry.get("num_features"),
        "classes": meta.get("classes"),
        "head": meta.get("head"), "init": entry.get("init"),
        "data": context.get("data"), "settings": context.get("settings"),
        "device": context.get("device"), "results": context.get("results"),
        "folder": timm_folder_name(arm), "repo": context.get("repo"),
        "source": meta.get("source"),
    }  # fmt: skip


def export_module(
    model: Exportable,
    out_dir: str | Path,
    source: str | None = None,
    init: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> Path:
    """Export whatever ``model.exportable()`` offers (CASS: both arms; DINO: one)."""
    arms, meta = model.exportable()
    return export_backbones(arms, out_dir, meta, source=source, init=init, context=context)


def read_meta(export_dir: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of an export, with a clear error when the folder is not one."""
    path = Path(export_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {export_dir} is not a cass-lightning export "
            "(expected <arm>.safetensors files and meta.json)"
        )
    meta = read_json(path, "export meta.json")
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a cass-lightning export meta.json (not a JSON object)")
    return meta


def exported_arms(meta: dict[str, Any]) -> list[str]:
    """The arms an export holds (CASS: cnn and vit; DINO: the one it trained)."""
    return [arm for arm in ARMS if isinstance(meta.get(arm), dict)]


def arm_meta(export_dir: str | Path, arm: str, meta: dict[str, Any] | None = None) -> dict:
    """The ``meta.json`` entry of one arm, or an error naming the arms the export does hold."""
    check_choice("arm", arm, ARMS)
    meta = read_meta(export_dir) if meta is None else meta
    if arm not in exported_arms(meta):
        held = exported_arms(meta) or ["none"]
        method = meta.get("method") or "an earlier version (no method recorded)"
        raise ValueError(
            f"the export {export_dir} holds no {arm} arm (it holds: {', '.join(held)}; written "
            f"by {method}); choose arm={held[0]} or another export"
        )
    return meta[arm]


def load_backbone(
    export_dir: str | Path,
    arm: str,
    num_classes: int | None = None,
    meta: dict[str, Any] | None = None,
) -> nn.Module:
    """Rebuild one exported arm with plain timm (strict key match, see
    :func:`cass_lightning.weights.load_weights`; the model's ``weights_record`` names the file).

    ``num_classes`` other than the exported one gives a fresh classifier of that width, as
    timm does for any pretrained file (the fine-tuning use). ``meta`` is the export's
    ``meta.json`` when the caller has already read it.
    """
    meta = read_meta(export_dir) if meta is None else meta
    check_backbone_meta(meta, Path(export_dir) / META_FILE)  # every field that builds the model
    entry = arm_meta(export_dir, arm, meta)
    file = Path(export_dir) / entry["file"]
    kwargs: dict[str, Any] = {"in_chans": entry["in_chans"]}
    if entry["img_size"] is not None:
        kwargs["img_size"] = entry["img_size"]
    model = timm.create_model(
        entry["timm_name"], pretrained=False, num_classes=entry["num_classes"], **kwargs
    )
    file = file.resolve()
    load_weights(model, read_state_dict(file), str(file), file_sha256(file), init="export")
    if num_classes is not None and num_classes != entry["num_classes"]:
        model.reset_classifier(num_classes)
    return model


# ----------------------------------------------------------------------------- classifiers
def classifier_file(arm: str) -> str:
    """``<arm>_classifier.safetensors``: the file name of a fine-tuned classifier export."""
    check_choice("arm", arm, ARMS)
    return f"{arm}_classifier.safetensors"


def export_classifier(
    model: nn.Module,
    out_dir: str | Path,
    meta: dict[str, Any],
    source: str | None = None,
    context: dict[str, Any] | None = None,
) -> Path:
    """Write a fine-tuned timm classifier (backbone and its new head) as
    ``<arm>_classifier.safetensors``, its timm folder ``timm-<arm>/`` (labels named) and
    ``meta.json`` (``kind: "classifier"``) into ``out_dir``; return the folder. ``context``:
    as :func:`export_backbones`'.

    ``meta`` must hold :data:`CLASSIFIER_FIELDS` (what :func:`load_classifier` needs to rebuild
    and feed the model); anything else in it (metrics, pretraining, label fraction) is kept as
    given. The file holds exactly ``model.state_dict()``, so
    ``timm.create_model(name, num_classes=len(classes))`` loads it strictly. Refuses a folder
    that already holds either file: exports are never overwritten.
    """
    missing = [k for k in CLASSIFIER_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"classifier export meta lacks {', '.join(missing)}")
    check_classifier_meta(meta, "the classifier to export")
    out = Path(out_dir)
    name = classifier_file(meta["arm"])
    folder = timm_folder_name(meta["arm"])
    existing = [n for n in (META_FILE, name, folder) if (out / n).exists()]
    if existing:
        raise FileExistsError(
            f"{out} already holds an export ({', '.join(existing)}); choose another folder"
        )
    state = contiguous_state(model, "the classifier to export")
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    atomic_write_bytes(path, safetensors_bytes(state))
    full = {
        "format": EXPORT_FORMAT,
        "kind": CLASSIFIER_KIND,
        "cass_lightning_version": PACKAGE_VERSION,
        "created": utc_timestamp(),
        "source": source,
        **meta,
        "num_classes": len(meta["classes"]),
        "file": name,
        "sha256": file_sha256(path),
        "timm_folder": folder,
    }
    entry = full | {"init": full.get("pretraining")}  # what fine-tuning started from
    card = model_card(_card_info(CLASSIFIER_KIND, meta["arm"], entry, full, context))
    data = data_config(full["img_size"], full["in_chans"], full["mean"], full["std"])
    write_timm_folder(model, out / folder, data, card, label_names=full["classes"])
    atomic_write_json(out / META_FILE, full)
    return out


def is_classifier_export(meta: dict[str, Any]) -> bool:
    return meta.get("kind") == CLASSIFIER_KIND


def read_classifier_meta(path: str | Path) -> tuple[dict[str, Any], Path]:
    """``(meta.json, weights file)`` of a classifier export given as its folder or its
    ``.safetensors`` file (``meta.json`` beside it); a backbone export is refused by name."""
    given = Path(path).expanduser()
    folder = given.parent if given.suffix == ".safetensors" else given
    if given.suffix == ".safetensors" and not given.is_file():
        raise FileNotFoundError(f"classifier export file not found: {given}")
    meta = read_meta(folder)
    if not is_classifier_export(meta):
        raise ValueError(
            f"{folder} is a pretraining export (backbones {', '.join(exported_arms(meta))}), not "
            "a fine-tuned classifier; give a fine-tuning run folder or a classifier export"
        )
    missing = [k for k in (*CLASSIFIER_FIELDS, "file") if k not in meta]
    if missing:
        raise ValueError(f"{folder / META_FILE} lacks {', '.join(missing)}")
    check_classifier_meta(meta, folder / META_FILE)  # every field that builds or feeds the model
    if not isinstance(meta["file"], str) or Path(meta["file"]).name != meta["file"]:
        raise ValueError(
            f"{folder / META_FILE}: field file must be a file name, not {meta['file']!r}"
        )
    file = folder / str(meta["file"])
    if given.suffix == ".safetensors" and given.resolve() != file.resolve():
        raise ValueError(f"{folder / META_FILE} describes {meta['file']}, not {given.name}")
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found (named by {folder / META_FILE})")
    return meta, file


def build_classifier(meta: dict[str, Any]) -> nn.Module:
    """The untrained timm model a classifier export's ``meta.json`` describes."""
    kwargs: dict[str, Any] = {"in_chans": int(meta["in_chans"])}
    if meta["arm"] == "vit" and meta["img_size"] is not None:
        kwargs["img_size"] = int(meta["img_size"])
    return timm.create_model(
        meta["timm_name"], pretrained=False, num_classes=len(meta["classes"]), **kwargs
    )


def load_classifier(path: str | Path) -> tuple[nn.Module, dict[str, Any], Path]:
    """A fine-tuned classifier export (folder or ``.safetensors``) as ``(model in eval mode,
    meta, weights file)``; the state dict must match the timm model key for key."""
    meta, file = read_classifier_meta(path)
    model = build_classifier(meta)
    try:
        model.load_state_dict(read_state_dict(file), strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:300]
        raise ValueError(f"{file} does not fit {meta['timm_name']} ({first})") from None
    return model.eval(), meta, file
