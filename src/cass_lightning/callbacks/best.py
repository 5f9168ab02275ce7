"""What the "best" pretraining checkpoint follows: a reading of representation quality.

A self-supervised loss is no quality measure (a collapsed CASS run has its lowest loss; DINO's
loss can be lowest at epoch 0), so the best checkpoint follows the online probe's validation
accuracy of the method's monitored arm (``PretrainingModule.best_monitor``, mode max) when the
online evaluation runs. Without it there is nothing to choose by: only ``last.ckpt`` is kept,
and the run's summary says why (``best_checkpoint: null``, ``best_reason``).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from cass_lightning.callbacks.checkpoint import LastCheckpoint
from cass_lightning.callbacks.online_eval import OnlineEvaluation


def _best_checkpoints(callbacks: list[Any]) -> list[ModelCheckpoint]:
    return [c for c in callbacks
            if isinstance(c, ModelCheckpoint) and not isinstance(c, LastCheckpoint)]  # fmt: skip


def choose_best(
    callbacks: list[Any], model: L.LightningModule, datamodule: Any
) -> tuple[list[Any], str | None]:
    """``callbacks`` with the best-checkpoint callback set to follow the method's monitor, or
    left out; and the reason when there is no best checkpoint (``None`` when there is one).

    Only a best-checkpoint callback without a ``monitor`` of its own is changed: one the user
    set to a metric keeps it.
    """
    best = [c for c in _best_checkpoints(callbacks) if c.monitor is None]
    if not best:
        return callbacks, None
    online = next((c for c in callbacks if isinstance(c, OnlineEvaluation)), None)
    monitor = getattr(model, "best_monitor", lambda: None)()
    if online is None:
        why = "no online evaluation is configured"
    else:
        why = online.why_off(datamodule, model)
        if why is None and monitor is None:
            why = f"{type(model).__name__} declares no monitor"
    if why is not None:
        reason = (f"{why}; a self-supervised loss is no quality measure, so only last.ckpt is "
                  "kept")  # fmt: skip
        return [c for c in callbacks if c not in best], reason
    kept = [c for c in callbacks if c not in best]
    for old in best:
        kept.append(ModelCheckpoint(
            dirpath=old.dirpath, filename=old.filename, monitor=monitor, mode="max",
            save_top_k=old.save_top_k, auto_insert_metric_name=old.auto_insert_metric_name,
            save_last=False,
        ))  # fmt: skip
    return kept, None
