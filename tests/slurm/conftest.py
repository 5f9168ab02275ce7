"""The one-node SLURM cluster the ``slurm`` tests submit real jobs to.

``tests/slurm/cluster.sh up`` installs (Debian, root) and starts it once per session; CI starts
it before the suite and stops it after. Where it cannot run (not root, no apt), the tests are
skipped with the script's reason. Every test keeps its jobs tiny (one or two cores).
"""

from __future__ import annotations

import functools
import os
import subprocess

import pytest
from cluster_helpers import SCRIPT, SLURM_CONF


@functools.cache
def start_cluster() -> tuple[str, str]:
    """Start the test cluster once per session: ``("up", "")``, or ``("skip" | "fail", why)``
    (asked by the collection hook and again by the fixture)."""
    # Installing Debian packages and starting daemons as SlurmUser=root needs root; a developer
    # without it (and without a cluster already started by root) cannot run these jobs at all.
    # CI runs as root and starts the cluster first (.ci/run), so there they always run.
    if os.geteuid() != 0 and not SLURM_CONF.is_file():
        return "skip", "the test cluster needs root to install and start (tests/slurm/cluster.sh)"
    done = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    if done.returncode == 0:
        return "up", ""
    # exit 3: the packages are missing and cannot be installed (not root): no scheduler to
    # submit to. Any other failure to start is a broken cluster and fails loudly.
    if done.returncode == 3:
        return "skip", f"no SLURM here: {done.stderr.strip()}"
    return "fail", f"the test cluster did not start:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The environment that reaches the test cluster (``SLURM_CONF``), the cluster started."""
    state, why = start_cluster()
    if state == "skip":
        # Reason: no root to install or start SLURM here (or its packages cannot be installed):
        # there is no scheduler to submit to. CI runs as root and starts the cluster before the
        # suite (.ci/run), so there these tests always run.
        pytest.skip(why)
    if state == "fail":
        pytest.fail(why)
    return {"SLURM_CONF": str(SLURM_CONF)}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the cluster scenarios as soon as the suite is collected, when they are selected:
    their jobs mostly wait (a time limit, a requeue), so they run beside the rest of the suite
    and their tests, reached later, only check what they left."""
    modules = {id(item.module): item.module for item in session.items
               if getattr(item, "module", None) is not None
               and hasattr(item.module, "start_scenarios_early")}  # fmt: skip
    factory = getattr(session.config, "_tmp_path_factory", None)  # the suite's temp folders
    if not modules or factory is None or start_cluster()[0] != "up":
        return  # the scenarios fixture starts them, or the cluster fixture skips them
    for module in modules.values():
        module.start_scenarios_early({"SLURM_CONF": str(SLURM_CONF)}, factory)
