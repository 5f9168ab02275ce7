"""What every Hydra app shares: the config folder, building objects from config, the config tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

#: conf/ at the repository root (the package is installed in editable mode from the checkout).
CONFIG_DIR = Path(__file__).resolve().parents[3] / "conf"


def run_dir(cfg: DictConfig) -> Path:
    """This run's folder: Hydra's output dir inside an app, ``paths.output_dir`` otherwise."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


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
