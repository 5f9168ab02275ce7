"""Progress bars that show the training loss without reading it back every step.

Lightning's bars turn every ``prog_bar=True`` on-step metric into a Python number at each batch
end (a host sync on a GPU), so the modules log their training loss outside the bar. These bars
show it again, read back (one transfer) only at the steps Lightning logs
(``trainer.log_every_n_steps``) and outside training batches (epoch ends, validation).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from torch import Tensor

from cass_lightning.modules.finite import logs_at_step_end

#: What the bars show of the training loss (the latest logged step, and the epoch's mean).
SHOWN = ("train/loss_step", "train/loss_epoch")


class _LossAtLoggingSteps:
    """Mixin for a Lightning progress bar: :data:`SHOWN` read back at the logging steps."""

    _read_now = True
    _shown: dict[str, float] = {}  # noqa: RUF012 (replaced, never changed in place)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._read_now = logs_at_step_end(trainer)
        try:
            super().on_train_batch_end(trainer, *args)  # type: ignore[misc]
        finally:
            self._read_now = True

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        if self._read_now:
            found = {k: trainer.callback_metrics.get(k) for k in SHOWN}
            found = {k: v for k, v in found.items() if isinstance(v, Tensor) and v.numel() == 1}
            self._shown = {}
            if found:
                values = torch.stack([v.detach().float().reshape(()) for v in found.values()])
                self._shown = dict(zip(found, values.tolist(), strict=True))
        return {**items, **self._shown}


class LoggingStepTQDMProgressBar(_LossAtLoggingSteps, TQDMProgressBar):
    """Lightning's tqdm bar, with the training loss read back only at the logging steps."""


class LoggingStepRichProgressBar(_LossAtLoggingSteps, RichProgressBar):
    """Lightning's rich bar, with the training loss read back only at the logging steps."""


def progress_bar(rich: bool) -> ProgressBar:
    """The bar the apps use: rich or tqdm, the loss read back at the logging steps."""
    return LoggingStepRichProgressBar() if rich else LoggingStepTQDMProgressBar()
