"""The one-node SLURM cluster the ``slurm`` tests submit real jobs to.

``tests/slurm/cluster.sh up`` installs (Debian, root) and starts it once per session; CI starts
it before the suite and stops it after. Where it cannot run (not root, no apt), the tests are
skipped with the script's reason. Every test keeps its jobs tiny (one or two cores).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from cluster_helpers import SCRIPT, SLURM_CONF


@pytest.fixture(scope="session")
def cluster() -> dict[str, str]:
    """The environment that reaches the test cluster (``SLURM_CONF``), the cluster started."""
    # Installing Debian packages and starting daemons as SlurmUser=root needs root; a developer
    # without it (and without a cluster already started by root) cannot run these jobs at all.
    # CI runs as root and starts the cluster first (.ci/run), so there they always run.
    if os.geteuid() != 0 and not SLURM_CONF.is_file():
        pytest.skip("the test cluster needs root to install and start (tests/slurm/cluster.sh)")
    done = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    if done.returncode != 0:
        # exit 3: the packages are missing and cannot be installed (not root): no scheduler to
        # submit to. Any other failure to start is a broken cluster and fails loudly below.
        if done.returncode == 3:
            pytest.skip(f"no SLURM here: {done.stderr.strip()}")
        pytest.fail(f"the test cluster did not start:\n{done.stderr[-3000:]}")
    return {"SLURM_CONF": str(SLURM_CONF)}
