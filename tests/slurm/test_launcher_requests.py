"""What the launcher asks of the scheduler, checked by the scheduler itself (``sbatch
--test-only``: would this job be accepted, on which partition) without running anything: a GPU
trainer asks for GPUs on the GPU partition, a CPU trainer asks for none."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cluster_helpers import CPU_PARTITION, GPU_PARTITION
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from submitit.slurm.slurm import _make_sbatch_string

from cass_lightning.apps.run.common import CONFIG_DIR

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

#: The test node's size: the GPU partition's one count-only GPU and the node's memory.
FITS = ["hydra.launcher.mem_gb=2", "hydra.launcher.cpus_per_task=1"]


def _script(tmp_path: Path, overrides: list[str]) -> str:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", *overrides])  # fmt: skip
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    keys = ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "signal_delay_s",
            "additional_parameters")  # fmt: skip
    params = {k: launcher[k] for k in keys}
    params["ntasks_per_node"] = launcher["tasks_per_node"]
    params["time"] = launcher["timeout_min"]
    params["mem"] = f"{params.pop('mem_gb')}GB"
    params["additional_parameters"] = dict(params["additional_parameters"])
    return _make_sbatch_string(command="true", folder=str(tmp_path), **params)


def _test_only(cluster: dict[str, str], script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "job.sh"
    path.write_text(script)
    return subprocess.run(["sbatch", "--test-only", str(path)], env={**os.environ, **cluster},
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_a_gpu_trainer_asks_for_its_gpu_and_the_gpu_partition_accepts_it(cluster, tmp_path):
    script = _script(tmp_path, ["trainer=gpu", f"hydra.launcher.partition={GPU_PARTITION}",
                                *FITS])  # fmt: skip
    assert "--gpus-per-node=1" in script and f"--partition={GPU_PARTITION}" in script
    done = _test_only(cluster, script, tmp_path)
    assert done.returncode == 0 and f"in partition {GPU_PARTITION}" in done.stderr, done.stderr


def test_more_gpus_than_a_node_has_is_refused_by_the_scheduler_itself(cluster, tmp_path):
    script = _script(tmp_path, ["trainer=ddp", "trainer.devices=4",
                                f"hydra.launcher.partition={GPU_PARTITION}", *FITS])  # fmt: skip
    assert "--gpus-per-node=4" in script and "--ntasks-per-node=4" in script
    done = _test_only(cluster, script, tmp_path)
    assert done.returncode != 0 and "not available" in done.stderr, done.stderr


def test_a_cpu_trainer_asks_for_no_gpu_on_the_cpu_partition(cluster, tmp_path):
    script = _script(tmp_path, [f"hydra.launcher.partition={CPU_PARTITION}"])
    assert "gpus" not in script and "--cpus-per-task=2" in script and "--mem=4GB" in script
    done = _test_only(cluster, script, tmp_path)
    assert done.returncode == 0 and f"in partition {CPU_PARTITION}" in done.stderr, done.stderr
