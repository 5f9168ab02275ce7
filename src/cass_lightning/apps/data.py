"""``cass-data``: check a dataset, or build its decoded cache, before any training.

    cass-data check data=isic2019 data.root=/data/ISIC2019
    cass-data cache data=brain_mri data.root=/data/brain_mri data.cache_dir=/fast/cache

``check`` prints a summary per split (images, classes, counts, image sizes seen, unreadable
files) and exits non-zero with the precise list when something is wrong. It runs the same
validation as the start of every training run, and writes ``splits.csv`` and
``data_report.json`` into its run folder.
"""

from __future__ import annotations

import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from cass_lightning.apps.run.common import CONFIG_DIR, run_dir
from cass_lightning.data.datamodule import MedicalDataModule

COMMANDS = {
    "check": "validate every image and print a summary per split",
    "cache": "build (or reuse) the decoded cache in data.cache_dir, then check",
}
DATA_ERRORS = (FileNotFoundError, NotADirectoryError, FileExistsError, ValueError, OSError)


def check(cfg: DictConfig) -> int:
    """Index, validate and split the dataset; print the report. Returns the exit status."""
    datamodule: MedicalDataModule = instantiate(cfg.data, _convert_="all")
    try:
        datamodule.prepare_data()
        datamodule.setup("fit")
    except DATA_ERRORS as err:
        print(f"cass-data: the dataset has problems\n{err}", file=sys.stderr)
        return 1
    print(datamodule.report.format())
    print(f"splits.csv and data_report.json written to {run_dir(cfg)}")
    return 0


def cache(cfg: DictConfig) -> int:
    if not cfg.data.get("cache_dir"):
        print("cass-data cache: set data.cache_dir=<folder> (outside the dataset)", file=sys.stderr)
        return 2
    return check(cfg)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="data_app")
def _run(cfg: DictConfig) -> None:
    status = {"check": check, "cache": cache}[cfg.command](cfg)
    if status:
        sys.exit(status)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in COMMANDS:
        lines = [
            f"  cass-data {name} data=<dataset> [overrides]: {what}"
            for name, what in COMMANDS.items()
        ]
        print("usage:\n" + "\n".join(lines), file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args[1:], f"+command={args[0]}"]
    _run()


if __name__ == "__main__":
    main()
