"""What every Hydra app shares: the config folder and its resolvers, the run folder's overwrite
guard and saved config, building objects from config, the config tree, and the run summary.
The run folder's lock and the process record are in :mod:`.runfolder`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# Lightning, torch and the launch rules are imported where they are used: the study's planner
# and the report share this module and should start in a second, not load the training stack.
from cass_lightning.apps.cluster import resolvers
from cass_lightning.apps.run.runfolder import is_rank_zero
from cass_lightning.checks import check_int
from cass_lightning.io import atomic_write_json, atomic_write_text

resolvers.register()  # the run folder's name and the SLURM job's size (conf/hydra/)

#: conf/ at the repository root (the package is installed in editable mode from the checkout).
CONFIG_DIR = Path(__file__).resolve().parents[4] / "conf"


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


def save_run_config(folder: Path, cfg: DictConfig) -> None:
    """Write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra would
    (rank 0 only).

    The apps set ``hydra.output_subdir: null`` so that Hydra writes nothing before the run has
    claimed its folder; the app calls this right after the claim.
    """
    if not HydraConfig.initialized() or not is_rank_zero():
        return
    hydra_cfg = HydraConfig.instance().cfg
    out = folder / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(task))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(HydraConfig.get().overrides.task))


def check_run_settings(cfg: DictConfig) -> None:
    """Refuse, by setting name, values that would train nothing or fail later under another
    name: ``data.batch_size`` < 1 or not dividing over the processes, ``trainer.max_epochs``/
    ``max_steps`` of 0, ``trainer.accumulate_grad_batches`` < 1. Reads only: call before anything
    is written."""
    from cass_lightning.runtime import check_batch_size, check_run_length, world_size

    trainer = cfg.trainer
    processes = world_size(trainer.get("devices"), trainer.get("num_nodes", 1))
    check_batch_size(cfg.data.get("batch_size"), processes)
    if not trainer.get("fast_dev_run"):
        check_run_length(trainer.get("max_epochs"), trainer.get("max_steps", -1))
    check_int("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)


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
        import lightning as L

        L.seed_everything(int(seed), workers=True)


def finite_or_none(value: Any) -> float | None:
    """A float for JSON, or None for NaN/inf (JSON has no NaN)."""
    number = float(value)
    return number if math.isfinite(number) else None


def report_run(
    headline: str,
    places: dict[str, Any],
    metrics: dict[str, Any],
    shown: Sequence[str] | None = None,
    summary_file: Path | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Print what a finished run produced (``places``: where things are; then the ``shown``
    metrics, or all), and write ``summary`` to ``summary_file`` for scripts and the study
    (rank 0 only)."""
    if not is_rank_zero():
        return
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
