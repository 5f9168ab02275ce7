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
    if os.geteuid() != 0 and not SLURM_CONF.is_file():
        pytest.skip("the test cluster needs root to install and start (tests/slurm/cluster.sh)")
    done = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True,
                          timeout=900, check=False)  # fmt: skip
    if done.returncode != 0:
        if done.returncode == 3:  # the script's "cannot install here"
            pytest.skip(f"no SLURM here: {done.stderr.strip()}")
        pytest.fail(f"the test cluster did not start:\n{done.stderr[-3000:]}")
    return {"SLURM_CONF": str(SLURM_CONF)}
