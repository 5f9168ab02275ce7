"""Hydra's submitit SLURM launcher, made to say what it does (``conf/hydra/launcher/slurm.yaml``).

What it adds to ``hydra_plugins.hydra_submitit_launcher``'s launcher, which submits every point
of a multirun as a job of one array and waits for them:

* the job ids and where each job's log is, printed at once (and the ``squeue`` line to follow);
* a job that fails (a refused input, a crash, cancelled, out of memory) is named at the
  submitting terminal with its error line and its log, not a traceback of the waiting code;
* Ctrl-C or SIGTERM while waiting stops the waiting, not the jobs: it says plainly that they go
  on and prints the ``scancel`` line that would stop them (exit 130/143). A stopped run saves
  and is requeued or resumed as in docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf

#: Lines of a job's stderr that say why it ended, most telling first.
_ERROR_PREFIXES = ("Error:", "cass-study:", "Stopped by", "slurmstepd", "srun: error")
_POLL_S = 2.0


def error_line(stderr: Path) -> str | None:
    """The line of a job's stderr that says why it ended: our apps' ``Error: ...``, a stop, the
    scheduler's own words, else the last line of a traceback."""
    try:
        lines = [ln.strip() for ln in stderr.read_text(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln]
    for prefix in _ERROR_PREFIXES:
        for line in reversed(lines):
            if line.startswith(prefix) or f"] {prefix}" in line:
                return line
    return lines[-1] if lines else None


class SlurmLauncher(SubmititSlurmLauncher):
    """See the module docstring. Settings are the submitit SLURM launcher's."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster="slurm", folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )  # fmt: skip
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"slurm_{k}": v for k, v in params.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        arguments, labels = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            labels.append(" ".join(filter_overrides(overrides)) or "(no overrides)")
            arguments.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                              Singleton.get_state()))  # fmt: skip
        jobs = executor.map_array(self, *zip(*arguments))
        _announce(jobs, labels, sweep_dir)
        with _stop_waiting(jobs):
            _wait(jobs)
        return _results(jobs, labels)


def _announce(jobs: list[Any], labels: list[str], sweep_dir: Path) -> None:
    ids = " ".join(job.job_id for job in jobs)
    print(f"Submitted {len(jobs)} SLURM job(s): {ids}", flush=True)
    for job, label in zip(jobs, labels):
        print(f"  {job.job_id}: {label}\n    log: {job.paths.stderr}", flush=True)
    first = jobs[0].job_id.split("_")[0] if jobs else ""
    print(f"Follow them with: squeue -j {first}   (run folders under {sweep_dir})", flush=True)


def _wait(jobs: list[Any]) -> None:
    while not all(job.done() for job in jobs):
        time.sleep(_POLL_S)


@contextlib.contextmanager
def _stop_waiting(jobs: list[Any]) -> Iterator[None]:
    """While waiting: Ctrl-C or SIGTERM ends the wait (exit 130/143), saying that the jobs go
    on and how to cancel them."""

    def stop(signum: int, frame: Any) -> None:
        live = [job.job_id for job in jobs if not job.done()]
        name = signal.Signals(signum).name
        if live:
            print(
                f"\nStopped waiting ({name}). The {len(live)} job(s) still in SLURM go on: "
                f"{' '.join(live)}. Follow them with squeue; cancel them with: "
                f"scancel {' '.join(live)}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _results(jobs: list[Any], labels: list[str]) -> list[JobReturn]:
    """Each job's ``JobReturn``; every job that failed is named with its error line and log,
    then the command exits 1 (after all were looked at), with no traceback of this code."""
    results, failed = [], []
    for job, label in zip(jobs, labels):
        try:
            results.append(job.results()[0])
        except Exception as err:  # submitit's UncompletedJobError / FailedJobError
            state = getattr(job, "state", "?")
            line = error_line(Path(job.paths.stderr)) or str(err).strip().splitlines()[0]
            failed.append(job.job_id)
            print(f"SLURM job {job.job_id} ({label}) ended {state}: {line}\n"
                  f"  log: {job.paths.stderr}", file=sys.stderr, flush=True)  # fmt: skip
    if failed:
        from cass_lightning.apps.run.console import mark_task_started

        mark_task_started()  # the jobs ran: exit 1, not a usage error's 2
        print(f"Error: {len(failed)} of {len(jobs)} SLURM job(s) did not finish: "
              f"{' '.join(failed)}", file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(1)
    return results
