"""The SLURM side without a scheduler: which job a process is, the launcher's sizing rules, a
requeued start told from another run, the study's check on its driver from another host, and
the world Lightning builds from a SLURM environment of two nodes (what one machine cannot run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cass_lightning.apps.cluster import resolvers
from cass_lightning.apps.cluster.job import current_job, earlier_start_of, same_start_of
from cass_lightning.apps.cluster.launcher import error_line
from cass_lightning.apps.run.common import CONFIG_DIR
from cass_lightning.apps.run.runfolder import LOCK_FILE, holder_alive
from cass_lightning.apps.study.points import HEARTBEAT_STALE_S, parent_alive, parent_record
from cass_lightning.runtime import check_multirun_strategy

ARRAY_TASK = {
    "SLURM_JOB_ID": "120", "SLURM_ARRAY_JOB_ID": "118", "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_STEP_ID": "0", "SLURM_RESTART_COUNT": "3", "SLURM_PROCID": "1",
    "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2", "SUBMITIT_EXECUTOR": "slurm",
}  # fmt: skip


def test_a_job_is_read_from_slurms_variables():
    job = current_job(ARRAY_TASK)
    assert job is not None
    assert (job.key, job.restart_count, job.procid, job.ntasks, job.nnodes) == ("118_2", 3, 1, 4, 2)
    assert job.submitit and job.owns_run_name and job.run_name() == "slurm-118_2-step0"
    assert current_job({}) is None
    batch = current_job({"SLURM_JOB_ID": "7", "ENVIRONMENT": "BATCH"})
    assert batch is not None and batch.owns_run_name and batch.run_name() == "slurm-7"
    assert batch.restart_count == 0 and batch.ntasks == 1
    shell = current_job({"SLURM_JOB_ID": "7"})  # an interactive salloc shell
    assert shell is not None and not shell.owns_run_name


def test_only_an_earlier_start_of_the_same_job_counts_as_a_requeue():
    job = current_job(ARRAY_TASK)
    assert earlier_start_of(job, {"job": "118_2", "restart": 2})
    assert not earlier_start_of(job, {"job": "118_2", "restart": 3})  # this very start
    assert same_start_of(job, {"job": "118_2", "restart": 3})
    assert not earlier_start_of(job, {"job": "118_1", "restart": 0})  # another array task
    assert not earlier_start_of(job, {"job": "118_2", "restart": "2"})  # not a count
    assert not earlier_start_of(job, {"job": "118_2", "restart": True})
    assert not earlier_start_of(None, {"job": "118_2", "restart": 0})
    assert not earlier_start_of(job, ["118_2"])


def test_a_lock_left_by_an_earlier_start_of_this_job_is_dead_on_any_host(monkeypatch):
    for key, value in ARRAY_TASK.items():
        monkeypatch.setenv(key, value)
    elsewhere = {"pid": 4242, "host": "node-that-was-preempted", "slurm": {"job": "118_2",
                 "restart": 1}}  # fmt: skip
    assert holder_alive(elsewhere) is False
    other_job = {**elsewhere, "slurm": {"job": "999", "restart": 0}}
    monkeypatch.setenv("PATH", "")  # no squeue to ask: another host cannot be told
    assert holder_alive(other_job) is None


def test_the_run_folder_is_named_after_the_job_only_in_batch_jobs_and_steps(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "ENVIRONMENT", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert resolvers.run_name("2026-01-02_03-04-05") == "2026-01-02_03-04-05"
    monkeypatch.setenv("SLURM_JOB_ID", "55")
    assert resolvers.run_name("stamp") == "stamp"  # salloc shell: its runs stay apart
    monkeypatch.setenv("SLURM_STEP_ID", "1")
    assert resolvers.run_name("stamp") == "slurm-55-step1"  # every task of the step agrees


def test_the_launcher_sizes_a_job_from_the_trainer():
    assert resolvers.slurm_gpus("cpu", 1) is None and resolvers.slurm_gpus("gpu", 4) == 4
    assert resolvers.slurm_gpus("auto", "2") == 2 and resolvers.slurm_gpus("gpu", [0, 1]) == 2
    assert resolvers.slurm_tasks("ddp", 4) == 4 and resolvers.slurm_tasks("auto", 4) == 1
    assert resolvers.slurm_tasks("ddp_spawn", 4) == 1  # spawns its own processes
    assert resolvers.slurm_cpus("gpu", 4) == 8 and resolvers.slurm_cpus("cpu", 1) == 2
    assert resolvers.slurm_cpus("cpu", 2) == 1
    assert resolvers.slurm_mem_gb("gpu", 4, 4) == 128
    assert resolvers.slurm_mem_gb("cpu", None, 2) == 8
    # the warning signal always lands after the start and before the limit
    assert [resolvers.signal_delay(m) for m in (1, 2, 8, 1440)] == [15, 30, 120, 120]


def _launcher(overrides: list[str], config: str = "pretrain") -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config, return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", *overrides])  # fmt: skip
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], dict(gpus_per_node=None, tasks_per_node=1, cpus_per_task=2, mem_gb=4, nodes=1)),
        (["trainer=gpu"], dict(gpus_per_node=1, tasks_per_node=1, cpus_per_task=8, mem_gb=32)),
        (["trainer=ddp", "trainer.devices=4"],
         dict(gpus_per_node=4, tasks_per_node=4, cpus_per_task=8, mem_gb=128)),
        (["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2"],
         dict(gpus_per_node=2, tasks_per_node=2, nodes=2)),
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
         dict(gpus_per_node=None, tasks_per_node=2, cpus_per_task=1, mem_gb=8)),
        (["hydra.launcher.timeout_min=2"], dict(signal_delay_s=30, max_num_timeout=30)),
    ],
)  # fmt: skip
def test_the_launcher_settings_follow_the_trainer(overrides, expected):
    launcher = _launcher(overrides)
    assert {k: launcher[k] for k in expected} == expected
    assert launcher["_target_"] == "hydra_plugins.cass_lightning_slurm.CassSlurmLauncher"


def test_the_study_worker_and_finetune_compose_the_launcher_without_a_trainer_of_their_own():
    assert _launcher([], "finetune")["gpus_per_node"] is None
    worker = _launcher(["study_dir=/s", "point=p", "trainer.accelerator=gpu"], "study_points")
    assert worker["gpus_per_node"] == 1 and worker["cpus_per_task"] == 8


def test_lightning_builds_a_two_node_world_from_slurms_variables(monkeypatch):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    env = {
        "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "2",
        "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0",
        "SLURM_JOB_NAME": "pretrain", "SLURM_NODELIST": "gpu[01-02]",
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    slurm = SLURMEnvironment(auto_requeue=False)
    assert SLURMEnvironment.detect()
    assert (slurm.world_size(), slurm.global_rank(), slurm.local_rank(), slurm.node_rank()) == (
        4, 3, 1, 1,
    )  # fmt: skip
    assert slurm.main_address == "gpu01"
    job = current_job()
    assert job is not None and job.ntasks == 4 and job.run_name() == "slurm-77-step0"
    # SLURM started the four processes: a multirun with DDP is allowed inside such a job ...
    check_multirun_strategy(True, "ddp", 2, num_nodes=2, scheduler_tasks=job.ntasks)
    # ... but not when the job's tasks do not match the trainer's processes
    with pytest.raises(ValueError, match="one task per device"):
        check_multirun_strategy(True, "ddp", 2, num_nodes=1, scheduler_tasks=job.ntasks)


def _lock(study: Path, token: str, age_s: float = 0) -> None:
    lock = study / LOCK_FILE
    lock.write_text(json.dumps({"pid": 1, "host": "login1", "token": token}))
    then = time.time() - age_s
    os.utime(lock, (then, then))


def test_a_job_on_another_host_checks_its_study_through_the_lock_and_its_heartbeat(tmp_path):
    token = "abc123"
    record = f"login1:999999-1:{token}"
    _lock(tmp_path, token)
    assert parent_alive(record, tmp_path) is True  # held by that study, touched just now
    _lock(tmp_path, token, age_s=HEARTBEAT_STALE_S + 5)
    assert parent_alive(record, tmp_path) is False  # no heartbeat: the study was killed
    _lock(tmp_path, "another-study")
    assert parent_alive(record, tmp_path) is False  # a new study holds the folder now
    (tmp_path / LOCK_FILE).unlink()
    assert parent_alive(record, tmp_path) is False  # the study ended and let go
    # on its own host the process itself is asked (this one is alive)
    assert parent_alive(parent_record(os.getpid(), token), tmp_path) is True
    assert parent_alive(f"{os.uname().nodename}:999999999-1:{token}", tmp_path) is False


def test_a_failed_jobs_error_line_is_found_in_its_log(tmp_path):
    log = tmp_path / "1_0_log.err"
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: raw\n")
    assert error_line(log) == "ValueError: raw"
    log.write_text("noise\nError: trainer.max_epochs=0 trains nothing\nsrun: error: task 0\n")
    assert error_line(log) == "Error: trainer.max_epochs=0 trains nothing"
    assert error_line(tmp_path / "missing.err") is None


def test_two_sweeps_started_in_the_same_second_get_two_folders():
    folders = set()
    for _ in range(2):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="pretrain", return_hydra_config=True)
        folders.add(str(cfg.hydra.sweep.dir))
        assert str(cfg.hydra.sweep.dir) == str(cfg.hydra.sweep.dir)  # one value per sweep
    GlobalHydra.instance().clear()
    assert len(folders) == 2
    stamps = {f.rsplit("/", 1)[1][:19] for f in folders}
    assert len(stamps) <= 2 and all(f.rsplit("-", 1)[1].isalnum() for f in folders)
