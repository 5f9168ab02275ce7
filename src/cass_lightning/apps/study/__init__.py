"""``cass-study`` (:mod:`.app`): the paper's study as one resumable command, and what serves it:
its plan and points (:mod:`.plan`), the worker that runs them (:mod:`.points`, started as
``python -m cass_lightning.apps.study.points``), its settings, data check, weights, wandb runs,
statuses and report."""
