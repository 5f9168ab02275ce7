"""cass-lightning's SLURM launcher, where Hydra looks for launchers (the ``hydra_plugins``
namespace); the code is :mod:`cass_lightning.apps.cluster.launcher`."""

from cass_lightning.apps.cluster.launcher import SlurmLauncher


class CassSlurmLauncher(SlurmLauncher):
    """Hydra's submitit SLURM launcher that prints job ids and logs and names failed jobs."""
