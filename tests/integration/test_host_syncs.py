"""No host sync in a training step: the calls that would make the CPU wait for a GPU, counted on
CPU with a ``TorchFunctionMode`` during the training steps of each module."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from cass_lightning.callbacks.progress import progress_bar
from cass_lightning.modules.classifier import ClassifierModule
from cass_lightning.modules.finite import FiniteLossGuard
from run_helpers import make_trainer
from sync_counter import CountSyncsDuringTraining, HostSyncCounter, count_host_syncs
from tiny_training import tiny_cass, tiny_classifier, tiny_dino, tiny_two_view

STEPS, EVERY = 20, 5


def test_the_counter_sees_every_read_back_but_not_the_optimizers_own_counters():
    t = torch.tensor(1.5)
    with HostSyncCounter(active=True) as counter:
        float(t), t.item(), bool(t), int(t), t.tolist(), t.cpu(), t.numpy()
        weight = torch.nn.Parameter(torch.ones(2))
        adam = torch.optim.Adam([weight], lr=0.1)
        weight.sum().backward()
        adam.step()  # its step counter is a CPU tensor that torch.optim reads itself
    names = [name for name, _, _ in counter.calls]
    assert names == ["float", "item", "bool", "int", "tolist", "cpu", "numpy"]
    # A guard read every step (as the old one was, and as check() still is) goes over the bound.
    guard = FiniteLossGuard("CASS", "advice")
    with HostSyncCounter(active=True) as counter:
        for step in range(STEPS):
            guard.check(torch.tensor(1.0), step)
    assert len(counter.calls) == STEPS > STEPS // EVERY


# the modules on tiny encoders, each with a loader of STEPS batches (BYOL: a momentum target;
# SimCLR: a contrastive loss)
_cass, _dino, _classifier = (
    partial(build, STEPS) for build in (tiny_cass, tiny_dino, tiny_classifier)
)
_byol, _simclr = (partial(tiny_two_view, method, STEPS) for method in ("byol", "simclr"))


@pytest.mark.parametrize("build", [_cass, _dino, _byol, _simclr, _classifier],
                         ids=["cass", "dino", "byol", "simclr", "classifier"])  # fmt: skip
def test_training_steps_read_back_at_most_once_per_logging_interval(build):
    model, loader = build()
    counter = HostSyncCounter()
    trainer = make_trainer(max_steps=STEPS, log_every_n_steps=EVERY,
                           callbacks=[CountSyncsDuringTraining(counter)])  # fmt: skip
    count_host_syncs(trainer, model, loader)
    assert trainer.global_step == STEPS
    steps = [call for call in counter.calls if call[1] == "steps"]
    assert len(steps) <= STEPS // EVERY, steps  # the guard's one read per interval
    if not isinstance(model, ClassifierModule):  # its epoch end computes the epoch's metrics
        assert counter.count() <= STEPS // EVERY + 2, counter.calls
    assert np.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "tqdm"])
def test_the_apps_progress_bars_read_the_loss_back_on_logging_steps_only(rich):
    model, loader = _cass()
    counter, bar = HostSyncCounter(), progress_bar(rich=rich)
    trainer = make_trainer(max_steps=STEPS, log_every_n_steps=EVERY, enable_progress_bar=True,
                           callbacks=[CountSyncsDuringTraining(counter), bar])  # fmt: skip
    count_host_syncs(trainer, model, loader)
    steps = [call for call in counter.calls if call[1] == "steps"]
    assert len(steps) <= 2 * (STEPS // EVERY), steps  # the guard's read and the bar's
    assert any("progress.py" in where for _, _, where in steps)
    shown = bar.get_metrics(trainer, model)
    assert shown["train/loss_epoch"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))
