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
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from cass_lightning.callbacks.export import WEIGHTS_INIT_KEY
from cass_lightning.export import ARMS, check_classifier_meta, export_classifier, export_module
from cass_lightning.io import UnreadableFileError, WriteRefusedError, load_torch_file, read_json
from cass_lightning.modules import pretraining_module_for
from cass_lightning.modules.classifier import EXPORT_RECORD_KEY, ClassifierModule
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
    try:
        numbers = {"img_size": _whole(preprocessing["img_size"]),
                   "in_chans": _whole(hp.get("in_chans", 3)),
                   "mean": [float(v) for v in preprocessing["mean"]],
                   "std": [float(v) for v in preprocessing["std"]]}  # fmt: skip
    except (TypeError, ValueError) as err:  # a hand-made checkpoint: named, never evaluated
        raise ValueError(f"{path}: its recorded preprocessing is not numbers ({err})") from None
    return {
        "method": record.get("method") or results.get("method"),
        "arm": hp["arm"],
        "timm_name": hp["timm_name"],
        **numbers,
        "classes": [c if isinstance(c, str) else repr(c) for c in classes],
        "multi_label": bool(hp["multi_label"]),
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


def _whole(value: Any) -> int:
    """``value`` as an int when it is one (a float with no fraction too), else ValueError."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value != int(value)):  # fmt: skip
        raise ValueError(f"{value!r} is not a whole number"[:120])
    return int(value)


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


def export_classifier_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    """``<arm>_classifier.safetensors`` + ``meta.json`` of a fine-tuning checkpoint."""
    path = Path(checkpoint)
    model, meta = load_classifier_checkpoint(path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    return export_classifier(model.backbone, out, meta, source=str(path.resolve()))


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    path = Path(checkpoint)
    state = read_checkpoint(path)
    hp = dict(state.get("hyper_parameters") or {})
    if is_classifier_hparams(hp):
        del state
        return export_classifier_checkpoint(path, out_dir)
    module = pretraining_module_for(hp)
    try:
        model = module.load_from_checkpoint(
            path, map_location="cpu", weights_only=True, pretrained=False,
            cnn_weights_file=None, vit_weights_file=None,
        )  # fmt: skip
    except RuntimeError as err:  # a state dict that does not fit its own hyperparameters
        first = str(err).strip().splitlines()[0][:300]
        raise UnreadableFileError(f"{path}: its weights do not fit its model ({first})") from None
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    return export_module(model, out, source=str(path.resolve()), init=_init_records(state, hp))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cass-export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", help="a CASS, DINO or fine-tuning Lightning checkpoint (.ckpt)"
    )
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export-<name>)")
    args = parser.parse_args(argv)  # a usage error exits 2
    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, FileExistsError, ValueError, WriteRefusedError) as err:
        print(f"cass-export: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"exported {', '.join(sorted(p.name for p in out.glob('*.safetensors')))} and "
          f"meta.json to {out}")  # fmt: skip


if __name__ == "__main__":
    main()
