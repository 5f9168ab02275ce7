"""What every Hydra app shares: the config folder and its resolvers, the run folder and its
overwrite guard, building objects from config, the config tree, and the run summary."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cass_lightning.io import atomic_write_json

#: conf/ at the repository root (the package is installed in editable mode from the checkout).
CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"


def pretraining_views(two_views: Any) -> str:
    """``data.train_views`` for CASS, derived from ``model.remedies.two_views`` so the two can
    never disagree: two draws of the paper's augmentation, or its single view."""
    return "pair" if str(two_views).lower() == "true" else "paper"


# Resolvers are registered on import: every app (and the tests that compose its config) imports
# this module before composing.
OmegaConf.register_new_resolver("cass_views", pretraining_views, replace=True)


def run_dir(cfg: DictConfig) -> Path:
    """This run's folder: Hydra's output dir inside an app, ``paths.output_dir`` otherwise."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def refuse_to_overwrite(folder: Path, kept: Iterable[str], hint: str = "") -> None:
    """Stop before a run writes into ``folder`` when it already holds any of ``kept`` (a file, or
    a non-empty sub-folder) from an earlier run: nothing a run wrote is ever overwritten."""
    found = []
    for name in kept:
        target = folder / name
        if target.is_file() or (target.is_dir() and any(target.iterdir())):
            found.append(name)
    if found:
        raise FileExistsError(
            f"{folder} already holds {', '.join(found)} from an earlier run; refusing to "
            "overwrite it. Start a new run (the default run folder is time-stamped) or set "
            f"hydra.run.dir{hint}"
        )


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` in a dict-like group (callbacks, loggers)."""
    if not group:
        return []
    return [
        instantiate(entry, _convert_="all")
        for entry in group.values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


def print_config_tree(
    cfg: DictConfig, order: tuple[str, ...] = ("data", "model", "trainer")
) -> None:
    """Print the resolved config as a rich tree, main groups first."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(str(key)).add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def seed_everything(seed: int | None) -> None:
    if seed is not None:
        L.seed_everything(int(seed), workers=True)


def finite_or_none(value: Any) -> float | None:
    """A float for JSON, or None for NaN/inf (JSON has no NaN)."""
    number = float(value)
    return number if math.isfinite(number) else None


@rank_zero_only
def report_run(
    headline: str,
    places: dict[str, Any],
    metrics: dict[str, Any],
    shown: Sequence[str] | None = None,
    summary_file: Path | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Print what a finished run produced (``places``: where things are; then the ``shown``
    metrics, or all), and write ``summary`` to ``summary_file`` for scripts and the study."""
    width = max((len(k) for k in places), default=0) + 1
    lines = [headline]
    lines += [f"  {f'{k}:':{width}} {'-' if v is None else v}" for k, v in places.items()]
    for key in shown if shown is not None else sorted(metrics):
        if key in metrics:
            value = metrics[key]
            lines.append(f"  {key}: {'-' if value is None else f'{value:.4f}'}")
    print("\n".join(lines))
    if summary_file is not None and summary is not None:
        atomic_write_json(summary_file, summary)
