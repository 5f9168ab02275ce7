"""``cass-export``: write the arms of a CASS or DINO checkpoint, or a fine-tuned classifier, as
plain timm weights.

    cass-export runs/pretrain/<run>/checkpoints/best-epoch012.ckpt [--out DIR]
    cass-export runs/finetune/<run>/checkpoints/best-epoch007.ckpt   # <arm>_classifier.safetensors

Pretraining already exports the final state to ``<run>/export``; this exports any other
checkpoint (e.g. the best one, or one saved mid-run). A fine-tuning checkpoint becomes
``<arm>_classifier.safetensors`` (the timm model with its new head) and a ``meta.json`` with
its class names, preprocessing, label fraction, seed, test metrics (from the run's
``results.json``) and the pretraining it started from. It never overwrites an existing export and
needs no ImageNet weights files: the arms are rebuilt untrained, then given the checkpoint's
weights. The checkpoint is read with ``weights_only=True``; a file that is missing, empty,
truncated, not a checkpoint or that would need code to load is refused by name (exit 1).

Every export also holds ``timm-<arm>/`` (``config.json``, ``model.safetensors``, ``README.md``
model card) that plain timm loads with ``timm.create_model("local-dir:<folder>",
pretrained=True)``. ``--results DIR`` puts the fine-tuning results under ``DIR`` that started
from these weights (same SHA-256) into the backbones' model cards. ``hub_repo=<org>/<name>`` (or
``--hub-repo``) then uploads the timm folders to the Hugging Face Hub, private unless
``--public``; given an export folder instead of a checkpoint, it only uploads::

    cass-export runs/pretrain/<run>/checkpoints/last.ckpt --results runs/finetune hub_repo=me/cass
    cass-export runs/pretrain/<run>/export hub_repo=me/cass-resnet50
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cass_lightning.apps.hub import HubUnavailableError, check_repo_id, plan_uploads, upload
from cass_lightning.callbacks.export import CONTEXT_KEY, WEIGHTS_INIT_KEY
from cass_lightning.export import ARMS, META_FILE, export_classifier, export_module
from cass_lightning.io import UnreadableFileError, WriteRefusedError, load_torch_file, read_json
from cass_lightning.modules import pretraining_module_for
from cass_lightning.modules.classifier import EXPORT_RECORD_KEY, ClassifierModule
from cass_lightning.records import check_classifier_meta, check_pretraining_hparams
from cass_lightning.weights import check_finite_state

#: The file a fine-tuning run writes beside its checkpoints (see ``apps/finetune.py``).
RESULTS_FILE = "results.json"
#: The decision threshold of multi-label classifiers (as their training metrics use).
MULTI_LABEL_THRESHOLD = 0.5
#: The datamodule settings that decide a dataset's splits (recorded so a prediction over
#: ``split=test`` can tell whether it is the fine-tuning run's own test split).
SPLIT_KEYS = ("layout", "root", "val_fraction", "test_fraction", "split_seed")


def default_out_dir(checkpoint: Path) -> Path:
    """``<run>/export-<checkpoint stem>`` for ``<run>/checkpoints/<stem>.ckpt``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / f"export-{checkpoint.stem}"


def _init_records(state: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    """What the arms started from: recorded in checkpoints written since it was kept, else
    what the hyperparameters say (marked as not verified)."""
    recorded = state.get(WEIGHTS_INIT_KEY)
    if isinstance(recorded, dict):
        return recorded
    unrecorded = {"init": "unrecorded", "pretrained": hp.get("pretrained")}
    return {arm: {**unrecorded, "file": hp.get(f"{arm}_weights_file")} for arm in ARMS}


def is_classifier_hparams(hp: dict[str, Any]) -> bool:
    """A fine-tuning (ClassifierModule) checkpoint's hyperparameters."""
    return {"arm", "num_classes", "multi_label", "mode"} <= set(hp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint read weights-only, or a named refusal."""
    state = load_torch_file(path, "checkpoint", mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UnreadableFileError(
            f"{path} is a torch file but not a Lightning checkpoint (no state_dict); give a "
            ".ckpt written by cass-pretrain or cass-finetune (e.g. <run>/checkpoints/last.ckpt)"
        )
    return state


def run_results(checkpoint: Path) -> dict[str, Any] | None:
    """The ``results.json`` of the fine-tuning run a checkpoint belongs to, if it has one."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    file = run / RESULTS_FILE
    if not file.is_file():
        return None
    results = read_json(file, "fine-tuning results.json")
    return results if isinstance(results, dict) else None


def _same_file(a: Any, b: Path) -> bool:
    return isinstance(a, str) and Path(a).expanduser().resolve() == b.resolve()


def classifier_meta(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """What a classifier export's ``meta.json`` says, from a fine-tuning checkpoint (its
    hyperparameters, its datamodule's and its export record) and its run's ``results.json``."""
    hp = dict(state.get("hyper_parameters") or {})
    data = dict(state.get("datamodule_hyper_parameters") or {})
    record = dict(state.get(EXPORT_RECORD_KEY) or {})
    results = run_results(path) or {}
    classes = record.get("classes") or results.get("classes")
    if not classes or len(classes) != hp["num_classes"]:
        raise ValueError(
            f"{path}: its class names are unknown (the checkpoint does not record them and no "
            f"{RESULTS_FILE} of a finished run lies beside it); export a checkpoint of a run "
            "that finished"
        )
    preprocessing = {k: data.get(k) if record.get(k) is None else record[k]
                     for k in ("img_size", "mean", "std")}  # fmt: skip
    if hp.get("img_size") is not None:
        preprocessing["img_size"] = hp["img_size"]  # the model's own size wins
    missing = [k for k, v in preprocessing.items() if v is None]
    if missing:
        raise ValueError(
            f"{path}: its preprocessing ({', '.join(missing)}) is not recorded; export a "
            "checkpoint written by cass-finetune"
        )
    scored = _same_file(results.get("best_checkpoint"), path)
    meta = {
        "method": record.get("method") or results.get("method"),
        "arm": hp["arm"],
        "timm_name": hp["timm_name"],
        "img_size": preprocessing["img_size"],
        "in_chans": hp.get("in_chans", 3),
        "mean": _listed(preprocessing["mean"]),
        "std": _listed(preprocessing["std"]),
        "classes": _listed(classes),
        "multi_label": hp["multi_label"],
        "threshold": MULTI_LABEL_THRESHOLD if hp["multi_label"] else None,
        "mode": hp.get("mode"),
        "label_fraction": results.get("label_fraction", data.get("label_fraction")),
        "seed": results.get("seed"),
        "label_seed": results.get("label_seed", data.get("label_seed")),
        "dataset": results.get("dataset", data.get("layout")),
        "data_splits": {k: data.get(k) for k in SPLIT_KEYS} if data else None,
        # the test metrics belong to the checkpoint results.json evaluated, and to no other
        "test_metrics": results.get("metrics") if scored else None,
        "test_split": results.get("test_split") if scored else None,
        "pretraining": results.get("weights_loaded") or record.get("weights_init")
        or {"init": hp.get("init"), "weights": hp.get("weights"), "verified": False},
    }  # fmt: skip
    # checked as read, not converted: a string here would otherwise reach predict's data config
    return check_classifier_meta(meta, path)


def _listed(values: Any) -> Any:
    return list(values) if isinstance(values, list | tuple) else values


def classifier_context(checkpoint: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """What a classifier's model card tells beyond ``meta.json``: its data's fingerprint, the
    run's settings and device, and the test result when ``results.json`` scored this file."""
    results = run_results(checkpoint) or {}
    machine = results.get("machine") or {}
    scored = meta.get("test_metrics") is not None
    return {
        "data": {"name": meta.get("dataset"), "fingerprint": results.get("data_fingerprint")},
        "settings": {"mode": meta.get("mode"), "label fraction": meta.get("label_fraction"),
                     "labelled images": results.get("labelled_images"), "seed": meta.get("seed"),
                     "epochs": results.get("epochs_run"), "precision": machine.get("precision")},
        "device": machine.get("device"),
        "results": [{"label_fraction": meta.get("label_fraction"), "seed": meta.get("seed"),
                     "metrics": meta.get("test_metrics"), "test_split": meta.get("test_split")}]
        if scored else [],
    }  # fmt: skip


def checkpoint_context(state: dict[str, Any], hp: dict[str, Any]) -> dict[str, Any]:
    """What a pretraining export's model cards tell: recorded in checkpoints written since it
    was kept, else what the datamodule's hyperparameters and the epoch say."""
    recorded = state.get(CONTEXT_KEY)
    if isinstance(recorded, dict):
        return dict(recorded)
    data = dict(state.get("datamodule_hyper_parameters") or {})
    return {"data": {"name": data.get("layout"), "fingerprint": None},
            "settings": {"epochs": state.get("epoch"), "optimiser steps": state.get("global_step"),
                         "batch size": data.get("batch_size"), "image size": hp.get("img_size")},
            "device": None}  # fmt: skip


def found_results(folders: list[str] | None) -> list[dict[str, Any]]:
    """Every readable fine-tuning ``results.json`` under ``folders`` (for the model cards)."""
    found = []
    for folder in folders or []:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"--results folder not found: {root}")
        for file in sorted(root.rglob(RESULTS_FILE)):
            result = read_json(file, "fine-tuning results.json")
            if isinstance(result, dict):
                found.append(result)
    return found


def load_classifier_checkpoint(checkpoint: str | Path) -> tuple[ClassifierModule, dict[str, Any]]:
    """A fine-tuning checkpoint as ``(ClassifierModule in eval mode, export meta)``; the module
    is rebuilt untrained (no weights files needed) and given the checkpoint's weights."""
    path = Path(checkpoint)
    state = read_checkpoint(path)
    hp = dict(state.get("hyper_parameters") or {})
    if not is_classifier_hparams(hp):
        raise ValueError(f"{path} is not a fine-tuning checkpoint (written by cass-finetune)")
    meta = classifier_meta(path, state)
    check_classifier_meta(meta, f"{path} (its recorded hyperparameters)")
    try:
        model = ClassifierModule.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, init="random", weights=None,
            timm_name=hp["timm_name"], img_size=hp.get("img_size"),
        )  # fmt: skip
    except RuntimeError as err:  # a state dict that does not fit its own hyperparameters
        first = str(err).strip().splitlines()[0][:300]
        raise UnreadableFileError(f"{path}: its weights do not fit its model ({first})") from None
    check_finite_state(model.backbone.state_dict(), str(path))
    return model.eval(), meta


def export_classifier_checkpoint(
    checkpoint: str | Path, out_dir: str | Path | None = None, repo: str | None = None
) -> Path:
    """``<arm>_classifier.safetensors``, ``timm-<arm>/`` and ``meta.json`` of a fine-tuning
    checkpoint (``repo``: the Hub repository its card's loading lines name)."""
    path = Path(checkpoint)
    model, meta = load_classifier_checkpoint(path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    context = classifier_context(path, meta) | {"repo": repo}
    return export_classifier(model.backbone, out, meta, source=str(path.resolve()),
                             context=context)  # fmt: skip


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    results: list[str] | None = None,
    repo: str | None = None,
) -> Path:
    """Export a pretraining or fine-tuning checkpoint; ``results``: folders searched for the
    fine-tuning results shown in the model cards; ``repo``: the Hub repository they name."""
    path = Path(checkpoint)
    state = read_checkpoint(path)
    hp = dict(state.get("hyper_parameters") or {})
    if is_classifier_hparams(hp):
        del state
        return export_classifier_checkpoint(path, out_dir, repo)
    module = pretraining_module_for(hp)
    for arm in ARMS:  # what builds the arms and goes into meta.json, checked as read
        check_pretraining_hparams(hp, path, arm)
    try:
        model = module.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, pretrained=False,
            cnn_weights_file=None, vit_weights_file=None,
        )  # fmt: skip
    except RuntimeError as err:  # a state dict that does not fit its own hyperparameters
        first = str(err).strip().splitlines()[0][:300]
        raise UnreadableFileError(f"{path}: its weights do not fit its model ({first})") from None
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    context = checkpoint_context(state, hp) | {"results": found_results(results), "repo": repo}
    return export_module(model, out, source=str(path.resolve()), init=_init_records(state, hp),
                         context=context)  # fmt: skip


def hub_argv(argv: list[str]) -> list[str]:
    """``hub_repo=<org>/<name>`` (the Hydra-style spelling) as ``--hub-repo <org>/<name>``."""
    out: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out += ["--hub-repo", value] if sep and key in ("hub_repo", "+hub_repo") else [arg]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cass-export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", help="a CASS, DINO or fine-tuning Lightning checkpoint (.ckpt)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export-<name>)")
    parser.add_argument(
        "--results",
        action="append",
        default=None,
        metavar="DIR",
        help="folder of fine-tuning runs whose results go into the model cards",
    )
    parser.add_argument(
        "--hub-repo",
        default=None,
        metavar="ORG/NAME",
        help="upload the timm folders to this Hugging Face Hub repository",
    )
    parser.add_argument("--public", action="store_true",
                        help="create the Hub repository public (default: private)")  # fmt: skip
    args = parser.parse_args(hub_argv(list(sys.argv[1:] if argv is None else argv)))
    try:
        if args.hub_repo is not None:
            check_repo_id(args.hub_repo)
        given = Path(args.checkpoint)
        if given.is_dir() and (given / META_FILE).is_file():  # an export: upload only
            if args.hub_repo is None:
                raise ValueError(f"{given} is an export already; give hub_repo=<org>/<name> "
                                 "to upload it, or a checkpoint to export")  # fmt: skip
            out = given
        else:
            out = export_checkpoint(given, args.out, args.results, args.hub_repo)
            print(f"exported {', '.join(sorted(p.name for p in out.glob('*.safetensors')))}, "
                  f"{', '.join(sorted(p.name for p in out.glob('timm-*')))} and meta.json to "
                  f"{out}")  # fmt: skip
        if args.hub_repo is not None:
            plans = plan_uploads(out, args.hub_repo, private=not args.public)
            for url in upload(plans):
                print(f"uploaded to {url}")
    except (FileNotFoundError, FileExistsError, ValueError, WriteRefusedError,
            HubUnavailableError) as err:  # fmt: skip
        print(f"cass-export: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
