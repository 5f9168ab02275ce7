"""The reference notebook's gradient defect, kept as an explicit ablation (never a default).

The authors' pretraining loop never zeroes gradients, so every step applies the sum of all
gradients so far. :class:`AccumulatingCASSModule` reproduces that, to measure what it changes;
``model=cass_notebook_gradients`` selects it from the command line.
"""

from __future__ import annotations

from typing import Any

from cass_lightning.modules.cass import CASSModule


class AccumulatingCASSModule(CASSModule):
    """CASS whose gradients accumulate over the whole run, as in the reference notebook."""

    method_name = "CASS (notebook gradients)"
    accumulates_gradients = True

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Never zero: step ``n`` applies the gradients of steps ``1..n`` summed."""
