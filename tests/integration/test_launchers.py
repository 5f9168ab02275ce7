"""Cluster launch configuration composes and resolves (nothing is submitted)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cass_lightning.apps.run.common import CONFIG_DIR


def test_slurm_launcher_follows_the_trainer_settings():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                "pretrain",
                return_hydra_config=True,
                overrides=[
                    "hydra/launcher=slurm",
                    "hydra.launcher.partition=gpu",
                    "trainer=ddp",
                    "trainer.devices=4",
                    "trainer.num_nodes=2",
                ],
            )
        launcher = cfg.hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher")
        assert launcher.partition == "gpu" and launcher.timeout_min == 1440
        assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)
    finally:
        GlobalHydra.instance().clear()
