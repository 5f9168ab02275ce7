"""``cass-export``: write the two arms of a CASS checkpoint as plain timm weights.

    cass-export runs/pretrain/<run>/checkpoints/best-epoch012.ckpt [--out DIR]

Pretraining already exports the final state to ``<run>/export``; this exports any other
checkpoint (e.g. the best one, or one saved mid-run). It never overwrites an existing export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cass_lightning.export import export_backbones
from cass_lightning.modules.cass import CASSModule


def default_out_dir(checkpoint: Path) -> Path:
    """``<run>/export-<checkpoint stem>`` for ``<run>/checkpoints/<stem>.ckpt``."""
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run / f"export-{checkpoint.stem}"


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path | None = None) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model = CASSModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    return export_backbones(model, out, source=str(path.resolve()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cass-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a CASS Lightning checkpoint (.ckpt)")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/export-<name>)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, FileExistsError) as err:
        parser.exit(2, f"cass-export: {err}\n")
    print(f"exported cnn.safetensors, vit.safetensors and meta.json to {out}")


if __name__ == "__main__":
    main()
