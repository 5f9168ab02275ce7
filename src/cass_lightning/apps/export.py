"""``cass-export``: write the arms of a CASS or DINO checkpoint as plain timm weights.

    cass-export runs/pretrain/<run>/checkpoints/best-epoch012.ckpt [--out DIR]

Pretraining already exports the final state to ``<run>/export``; this exports any other
checkpoint (e.g. the best one, or one saved mid-run). It never overwrites an existing export and
needs no ImageNet weights files: the arms are rebuilt untrained, then given the checkpoint's
weights. The checkpoint is read with ``weights_only=True``; a file that is missing, empty,
truncated, not a checkpoint or that would need code to load is refused by name (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cass_lightning.callbacks.export import WEIGHTS_INIT_KEY
from cass_lightning.export import ARMS, export_module
from cass_lightning.io import UnreadableFileError, WriteRefusedError, load_torch_file
from cass_lightning.modules import pretraining_module_for


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


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    path = Path(checkpoint)
    state = load_torch_file(path, "checkpoint", mmap=True)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UnreadableFileError(
            f"{path} is a torch file but not a Lightning checkpoint (no state_dict); give a "
            ".ckpt written by cass-pretrain (e.g. <run>/checkpoints/last.ckpt)"
        )
    hp = dict(state.get("hyper_parameters") or {})
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
    parser.add_argument("checkpoint", help="a CASS or DINO Lightning checkpoint (.ckpt)")
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
