"""The documented cluster commands against a real SLURM (one node, accounting on): sweeps, DDP
inside a job, preemption, requeue and time limits that resume by themselves, the study with its
``cass-study`` on another host, and a failed job's error line at the submitting terminal.

The scenarios are started together (each in a thread that drives its jobs) so the scheduler
runs them side by side on the node's two cores; each test waits for its own and checks it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import (
    CPU_PARTITION,
    HERE,
    hurry_requeued,
    job_env,
    read,
    sacct_states,
    scheduler,
    starts,
    until,
    wait_job,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

APP = [sys.executable, "-m", "cass_lightning.apps.pretrain"]
TINY = ["debug=tiny", "print_config=false", "rich_progress_bar=false"]
#: Steps per epoch of debug=tiny at batch 8 (24 synthetic training images).
STEPS_PER_EPOCH = 3
SLURM = ["-m", "hydra/launcher=slurm", f"hydra.launcher.partition={CPU_PARTITION}"]


def _submitted(out: str) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith("Submitted "))
    return line.split(": ", 1)[1].split()


def _start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _job_of(proc_out: Path) -> str:
    """The job id the launcher printed first (it prints before it waits)."""
    return _submitted(proc_out.read_text())[0]


# ----------------------------------------------------------------------------- scenarios
def sweep(cluster: dict[str, str], root: Path) -> dict[str, Any]:
    """The documented sweep with only the partition given (the job's size is the launcher's)."""
    sweep_dir = root / "sweep"
    proc = _start([*APP, *SLURM, *TINY, "data.batch_size=4,8", f"hydra.sweep.dir={sweep_dir}"],
                  job_env(cluster, root), root)  # fmt: skip
    code, out, err = _finish(proc)
    jobs = _submitted(out) if "Submitted " in out else []
    return {"code": code, "out": out, "err": err, "dir": sweep_dir, "jobs": jobs,
            "states": {j: sacct_states(cluster, j) for j in jobs}}  # fmt: skip


def failing(cluster: dict[str, str], root: Path) -> dict[str, Any]:
    """A point the job refuses (trainer.max_epochs=0): named at the submitting terminal."""
    proc = _start([*APP, *SLURM, "hydra.launcher.cpus_per_task=1", *TINY,
                   "trainer.max_epochs=0", f"hydra.sweep.dir={root / 'fail'}"],
                  job_env(cluster, root), root)  # fmt: skip
    code, out, err = _finish(proc)
    return {"code": code, "out": out, "err": err}


def ddp(cluster: dict[str, str], root: Path) -> dict[str, Any]:
    """The documented DDP form, on CPUs: two tasks, one process each, one run folder."""
    sweep_dir = root / "ddp"
    proc = _start([*APP, *SLURM, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   *TINY, "trainer.max_epochs=2", f"hydra.sweep.dir={sweep_dir}"],
                  job_env(cluster, root), root)  # fmt: skip
    code, out, err = _finish(proc)
    return {"code": code, "out": out, "err": err, "dir": sweep_dir}


def time_limit(cluster: dict[str, str], root: Path, epochs: int = 60) -> dict[str, Any]:
    """A launcher job with a two-minute limit and more work than that (each step sleeps 0.5 s,
    so on any machine): the warning signal comes before the limit (SLURM sends it up to a
    minute early: 30-90 s into a start), the run saves, submitit requeues it, and it
    continues."""
    sweep_dir = root / "limit"
    out_file = root / "limit.out"
    root.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w") as out:
        proc = subprocess.Popen(
            [*APP, *SLURM, "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=2",
             *TINY, f"trainer.max_epochs={epochs}", f"hydra.sweep.dir={sweep_dir}",
             "+callbacks.slow._target_=slow_steps.SleepEachStep"],
            env=job_env(cluster, root, PYTHONPATH=str(HERE)), cwd=root, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        job = until(lambda: "Submitted " in out_file.read_text() and _job_of(out_file), 120,
                    "the launcher to submit")  # fmt: skip
        wait_job(cluster, job, 720, proc)
    return {"code": proc.returncode, "out": out_file.read_text(), "dir": sweep_dir, "job": job,
            "epochs": epochs, "states": sacct_states(cluster, job)}  # fmt: skip


def plain_sbatch(cluster: dict[str, str], root: Path, epochs: int = 50) -> dict[str, Any]:
    """docs/cluster.md's plain ``sbatch`` script (srun, --requeue, a warning signal): stopped
    once by ``scancel --signal=USR1`` (the run requeues itself) and once by ``scontrol requeue``
    (the scheduler's requeue: SIGTERM); each start continues the job's own run folder."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "pretrain.sbatch"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name=cass-pretrain --ntasks=1 --cpus-per-task=1 --mem=4G
        #SBATCH --requeue --signal=USR1@120 --open-mode=append --output={root}/%j.log
        srun cass-pretrain {" ".join(TINY)} trainer.max_epochs={epochs}
        """))  # fmt: skip
    env = job_env(cluster, root)
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, cwd=root, text=True,
                         capture_output=True, check=True).stdout.strip()  # fmt: skip
    run = root / "runs" / "debug" / f"slurm-{job}-step0"

    def saved_in(start: int) -> bool:  # this start has written a checkpoint
        hurry_requeued(cluster, job)
        s = starts(run)
        return (
            len(s) == start + 1
            and (run / "checkpoints" / "last.ckpt").is_file()
            and (len(list((run / "csv").glob("metrics*.csv"))) > start)
        )

    until(lambda: saved_in(0), 300, "the first start's checkpoint", every=1.0)
    scheduler(cluster, "scancel", "--signal=USR1", job)
    until(lambda: saved_in(1), 300, "the requeued start's checkpoint", every=1.0)
    scheduler(cluster, "scontrol", "requeue", job)
    wait_job(cluster, job, 420)
    return {"job": job, "run": run, "epochs": epochs, "log": (root / f"{job}.log").read_text(),
            "states": sacct_states(cluster, job)}  # fmt: skip


def late_warnings(cluster: dict[str, str], root: Path) -> dict[str, Any]:
    """A plain ``sbatch`` job whose run has finished training gets the warning signal twice
    (``scancel --signal=USR2``): while it exports, and after the app has returned, while the
    interpreter exits. Neither may requeue it, kill it or fail it."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "late.sbatch"
    pause = "+callbacks.pause._target_=slow_steps.PauseAfterTraining"
    pause += f" +callbacks.pause.folder={root}"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name=cass-late --ntasks=1 --cpus-per-task=1 --mem=4G
        #SBATCH --requeue --signal=USR1@120 --output={root}/%j.log
        srun cass-pretrain {" ".join(TINY)} trainer.max_epochs=1 {pause}
        """))  # fmt: skip
    env = job_env(cluster, root, PYTHONPATH=str(HERE))
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, cwd=root, text=True,
                         capture_output=True, check=True).stdout.strip()  # fmt: skip
    log = root / f"{job}.log"
    for moment in ("exporting", "exiting"):
        until(lambda m=moment: (root / f"{m}.here").is_file(), 300, f"the job {moment}")
        scheduler(cluster, "scancel", "--signal=USR2", job)
        if moment == "exporting":  # the run says it ignored it
            until(lambda: "ignored" in log.read_text(), 60, "the signal to arrive")
        time.sleep(2.0)  # delivered while the run is held there
        (root / f"{moment}.go").write_text("")
    wait_job(cluster, job, 300)
    exit_code = scheduler(cluster, "sacct", "-n", "-X", "-P", "-j", job, "-o", "ExitCode")
    return {"job": job, "run": root / "runs" / "debug" / f"slurm-{job}-step0",
            "log": log.read_text(), "states": sacct_states(cluster, job),
            "exit": exit_code.strip()}  # fmt: skip


def finetune_requeued(cluster: dict[str, str], root: Path) -> dict[str, Any]:
    """A plain ``sbatch`` job whose fine-tuning has written its results is requeued
    (``scontrol requeue``, as preemption does) while the script still runs: the next start
    finds the finished run and leaves it as it is."""
    root.mkdir(parents=True, exist_ok=True)
    run = root / "ft"
    script = root / "finetune.sbatch"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --job-name=cass-ft --ntasks=1 --cpus-per-task=1 --mem=4G
        #SBATCH --requeue --open-mode=append --output={root}/%j.log
        srun cass-finetune debug=tiny arm=cnn weights=random hydra.run.dir={run}
        touch {root}/finished-${{SLURM_RESTART_COUNT:-0}}
        [ -n "$SLURM_RESTART_COUNT" ] || sleep 300
        """))  # fmt: skip
    env = job_env(cluster, root)
    job = subprocess.run(["sbatch", "--parsable", str(script)], env=env, cwd=root, text=True,
                         capture_output=True, check=True).stdout.strip()  # fmt: skip
    until(lambda: (root / "finished-0").is_file(), 300, "the first start's results")
    written = (run / "results.json").read_bytes()
    scheduler(cluster, "scontrol", "requeue", job)
    wait_job(cluster, job, 300)
    return {
        "job": job,
        "run": run,
        "written": written,
        "log": (root / f"{job}.log").read_text(),
        "states": sacct_states(cluster, job),
        "again": (root / "finished-1").is_file(),
    }


def study_elsewhere(cluster: dict[str, str], root: Path) -> dict[str, Any]:
    """The documented ``cass-study ... hydra/launcher=slurm``, its cass-study on another host
    (a login node: its own hostname, in a UTS namespace) than the jobs."""
    root.mkdir(parents=True, exist_ok=True)
    study = [sys.executable, "-m", "cass_lightning.apps.study", "study=smoke",
             "study.methods=[cass]", "study.arms=[cnn]", "study.fractions=[1.0]",
             "study.seeds=[0]", "study.pretrain.epochs=2",
             'study.overrides.finetune=["trainer.max_epochs=2"]', "hydra/launcher=slurm",
             f"hydra.launcher.partition={CPU_PARTITION}",
             "hydra.launcher.cpus_per_task=1"]  # fmt: skip
    command = ["unshare", "--uts", "sh", "-c", 'hostname login-node && exec "$@"', "-", *study]
    done = subprocess.run(command, env=job_env(cluster, root), cwd=root, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    return {"code": done.returncode, "out": done.stdout, "err": done.stderr,
            "dir": root / "runs" / "study" / "smoke-synthetic"}  # fmt: skip


SCENARIOS = {
    "sweep": sweep, "failing": failing, "ddp": ddp, "time_limit": time_limit,
    "plain_sbatch": plain_sbatch, "late": late_warnings, "finetune": finetune_requeued,
    "study": study_elsewhere,
}  # fmt: skip


#: The scenarios started when the suite was collected (conftest.py), if they were.
_EARLY: dict[str, Future] = {}
_POOL = ThreadPoolExecutor(max_workers=len(SCENARIOS), thread_name_prefix="slurm-scenario")


def start_scenarios_early(cluster: dict[str, str], factory: pytest.TempPathFactory) -> None:
    """Every scenario started at once, each in its own folder, in threads that drive its jobs."""
    for name, run in SCENARIOS.items():
        if name not in _EARLY:  # started once
            _EARLY[name] = _POOL.submit(run, cluster, factory.mktemp(name))


@pytest.fixture(scope="module")
def scenarios(cluster: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The scenarios' results to come (started now unless the collection started them)."""
    start_scenarios_early(cluster, tmp_path_factory)
    yield _EARLY
    _POOL.shutdown(wait=True, cancel_futures=True)


def _result(scenarios: dict[str, Future], name: str) -> dict[str, Any]:
    return scenarios[name].result(timeout=900)


def _one_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return runs[0]


# ----------------------------------------------------------------------------- tests
def test_the_documented_sweep_runs_with_only_the_partition_given(scenarios, cluster):
    r = _result(scenarios, "sweep")
    assert r["code"] == 0, r["err"][-3000:]
    assert len(r["jobs"]) == 2 and "log: " in r["out"] and "squeue -j" in r["out"]
    for job in r["jobs"]:
        assert r["states"][job] == ["COMPLETED"]  # sacct: accounting answers
    runs = sorted(p for p in r["dir"].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_")[0] for p in runs] == ["0", "1"]
    for run in runs:
        assert (run / "export" / "meta.json").is_file() and (run / "summary.json").is_file()
        assert starts(run)[0]["slurm"]["job"] in r["jobs"]
    script = next((r["dir"] / ".submitit").rglob("*_submission.sh")).read_text()
    assert "--gpus-per-node" not in script and "--gres" not in script  # a CPU trainer
    for flag in ("--cpus-per-task=2", "--mem=4GB", "--ntasks-per-node=1", "--signal=USR2@120",
                 "--requeue", f"--partition={CPU_PARTITION}"):  # fmt: skip
        assert flag in script, flag


def test_a_refused_point_is_named_at_the_submitting_terminal(scenarios):
    r = _result(scenarios, "failing")
    assert r["code"] == 1, r["err"][-2000:]
    named = [ln for ln in r["err"].splitlines() if ln.startswith("SLURM job ")]
    assert len(named) == 1 and "ended FAILED" in named[0], r["err"][-2000:]
    assert "Error:" in named[0] and "trainer.max_epochs" in named[0]
    assert "  log: " in r["err"] and "Traceback" not in r["err"]


def test_ddp_inside_a_job_runs_one_process_per_task_into_one_folder(scenarios):
    r = _result(scenarios, "ddp")
    assert r["code"] == 0, r["err"][-3000:]
    run = _one_run(r["dir"])
    summary = read(run / "summary.json")
    assert summary["global_step"] == 2 * STEPS_PER_EPOCH  # global batch 8 over 2 processes
    assert summary["images"] == 2 * STEPS_PER_EPOCH * 8  # counted over both processes
    logs = sorted((r["dir"] / ".submitit").rglob("*_log.err"))
    assert len(logs) == 2  # task 0 and task 1 of the one job
    text = "".join(p.read_text() for p in logs)
    assert "MEMBER: 1/2" in text and "MEMBER: 2/2" in text
    script = next((r["dir"] / ".submitit").rglob("*_submission.sh")).read_text()
    assert "--ntasks-per-node=2" in script and "--cpus-per-task=1" in script


def test_a_time_limit_saves_requeues_and_finishes_like_an_uninterrupted_run(scenarios):
    r = _result(scenarios, "time_limit")
    assert r["code"] == 0, r["out"][-3000:]
    assert r["states"][-1] == "COMPLETED", r["states"]  # a late warning did not fail it
    run = _one_run(r["dir"])
    summary = read(run / "summary.json")
    attempts = summary["attempts"]
    assert len(attempts) >= 2, attempts
    assert all(a["outcome"] == "stopped" for a in attempts[:-1]) and attempts[-1]["outcome"] == (
        "finished"
    )
    assert summary["steps"] == summary["global_step"] == r["epochs"] * STEPS_PER_EPOCH
    assert summary["images"] == r["epochs"] * STEPS_PER_EPOCH * 8
    restarts = [s["slurm"]["restart"] for s in starts(run)]
    assert restarts == list(range(len(restarts)))  # one job, started again and again
    log = "".join(p.read_text() for p in (r["dir"] / ".submitit").rglob("*_log.err"))
    assert "Stopped by SIGUSR2" in log and "this job is timed-out" in log
    assert "REQUEUED" in r["states"]


def test_a_warning_signal_after_training_neither_requeues_nor_fails_the_job(scenarios):
    r = _result(scenarios, "late")
    assert r["states"] == ["COMPLETED"] and r["exit"] == "0:0", (r["states"], r["log"][-3000:])
    assert r["log"].count("Received SIGUSR2 after the training had finished: ignored") == 1
    assert "Stopped by" not in r["log"] and "requeued" not in r["log"]
    summary = read(r["run"] / "summary.json")
    assert [a["outcome"] for a in summary["attempts"]] == ["finished"]
    assert (r["run"] / "export" / "meta.json").is_file()


def test_a_finetune_job_requeued_after_its_results_leaves_them_as_they_are(scenarios):
    r = _result(scenarios, "finetune")
    assert r["again"] and r["states"][-1] == "COMPLETED" and "REQUEUED" in r["states"], r["log"]
    assert f"Requeued SLURM job: {r['run']} had already finished; nothing to do." in r["log"]
    assert (r["run"] / "results.json").read_bytes() == r["written"]
    assert not (r["run"] / "attempts").exists()


def test_a_plain_sbatch_job_requeued_twice_continues_its_own_folder(scenarios):
    r = _result(scenarios, "plain_sbatch")
    run = r["run"]
    summary = read(run / "summary.json")
    outcomes = [a["outcome"] for a in summary["attempts"]]
    assert outcomes == ["stopped", "stopped", "finished"], outcomes
    assert summary["steps"] == summary["global_step"] == r["epochs"] * STEPS_PER_EPOCH
    assert summary["images"] == r["epochs"] * STEPS_PER_EPOCH * 8
    assert [s["slurm"]["restart"] for s in starts(run)] == [0, 1, 2]
    assert "Stopped by SIGUSR1" in r["log"] and f"SLURM job {r['job']} was requeued" in r["log"]
    assert "Stopped by SIGTERM" in r["log"]  # scontrol requeue: the scheduler's own
    assert "Requeued SLURM job: continuing" in r["log"]
    assert r["states"] == ["REQUEUED", "REQUEUED", "COMPLETED"]
    assert not list(run.parent.glob("2*")), "a requeued start made a new run folder"


def test_the_study_runs_its_points_as_jobs_from_another_host(scenarios):
    r = _result(scenarios, "study")
    assert r["code"] == 0, (r["out"][-2000:], r["err"][-2000:])
    assert r["out"].count("Submitted 1 SLURM job(s)") == 2  # one job per stage
    assert "2 points: 2 done" in r["out"]
    assert (r["dir"] / "report" / "study.md").is_file()
    parents = [ln for ln in r["out"].splitlines() if "parent='login-node:" in ln]
    assert len(parents) == 2  # the jobs knew their study ran elsewhere, and found it alive
    for started in r["dir"].glob("points/*/started.json"):
        record = read(started)
        assert record["host"] != "login-node" and record["slurm"]["job"]
