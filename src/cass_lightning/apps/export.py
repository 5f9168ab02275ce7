"""``cass-export``: write the arms of a CASS or DINO checkpoint as plain timm weights.

    cass-export runs/pretrain/<run>/checkpoints/best-epoch012.ckpt [--out DIR]

Pretraining already exports the final state to ``<run>/export``; this exports any other
checkpoint (e.g. the best one, or one saved mid-run). It never overwrites an existing export and
needs no ImageNet weights files: the arms are rebuilt untrained, then given the checkpoint's
weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cass_lightning.export import export_module
from cass_lightning.modules import pretraining_module_for
from cass_lightning.modules.legacy import stored_hparams


def default_out_dir(checkpoint: Path) -> Path:
    """``<run>/export-<checkpoint stem>`` for ``<run>/checkpoints/<stem>.ckpt``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / f"export-{checkpoint.stem}"


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    module = pretraining_module_for(stored_hparams(path))
    model = module.load_from_checkpoint(
        path, map_location="cpu", weights_only=True, pretrained=False,
        cnn_weights_file=None, vit_weights_file=None,
    )  # fmt: skip
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    return export_module(model, out, source=str(path.resolve()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cass-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a CASS or DINO Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export-<name>)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, FileExistsError) as err:
        parser.exit(2, f"cass-export: {err}\n")
    print(f"exported {', '.join(sorted(p.name for p in out.glob('*.safetensors')))} and "
          f"meta.json to {out}")  # fmt: skip


if __name__ == "__main__":
    main()
