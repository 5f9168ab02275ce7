"""FiniteLossGuard on its own: recorded on the device, read back once, the first bad step named."""

from __future__ import annotations

import math

import pytest
import torch

from cass_lightning.modules.finite import FiniteLossGuard, non_finite_tensors
from sync_counter import HostSyncCounter

ADVICE = "Lower the learning rate"


def _outputs(cnn_bad: bool = False, vit_bad: bool = False) -> dict[str, torch.Tensor]:
    cnn, vit = torch.ones(2, 4), torch.ones(2, 4)
    if cnn_bad:
        cnn[0, 0] = float("nan")
    if vit_bad:
        vit[1, 1] = float("inf")
    return {"cnn": cnn, "vit": vit}


def test_recording_reads_nothing_back_and_the_first_bad_step_is_kept():
    guard = FiniteLossGuard("CASS", ADVICE)
    losses = [0.5, 0.25, float("nan"), float("inf"), 0.75]
    with HostSyncCounter(active=True) as counter:
        for step, loss in enumerate(losses):
            guard.record(torch.tensor(loss), step, _outputs(vit_bad=step == 2))
    assert counter.calls == []
    bad = guard.first_bad()
    assert (bad.step, bad.bad_arms, bad.last_step) == (2, ("vit",), 1)
    assert math.isnan(bad.loss) and bad.last_loss == pytest.approx(0.25)
    with pytest.raises(FloatingPointError) as info:
        guard.verify(now=5)
    assert str(info.value) == (
        "non-finite CASS loss (nan) at global step 2 (noticed at step 5); non-finite output from "
        "vit; last finite loss 0.25 at step 1. Lower the learning rate; last.ckpt holds the last "
        "good state."
    )


def test_a_bad_loss_with_finite_outputs_names_the_loss_and_an_early_one_says_so():
    guard = FiniteLossGuard("CASS", ADVICE)
    guard.record(torch.tensor(float("inf")), 0, _outputs())
    with pytest.raises(FloatingPointError, match=r"\(inf\) at global step 0; non-finite output "
                       r"from neither arm \(the loss itself\); no finite loss yet"):  # fmt: skip
        guard.verify(now=0)


def test_finite_losses_pass_and_a_guard_without_arms_names_none():
    guard = FiniteLossGuard("fine-tuning", ADVICE, kept="no results were written")
    for step in range(3):
        guard.record(torch.tensor(1.0 / (step + 1)), step)
    guard.verify(now=3)
    assert guard.first_bad() is None and guard.verified_at == 3
    guard.record(torch.tensor(float("nan"), dtype=torch.bfloat16), 3)
    with pytest.raises(FloatingPointError) as info:
        guard.verify(now=4)
    message = str(info.value)
    assert message.startswith("non-finite fine-tuning loss (nan) at global step 3 (noticed at")
    assert "output from" not in message and "last finite loss 0.333333 at step 2" in message
    assert message.endswith("no results were written.")
    guard.reset()
    assert guard.first_bad() is None


def test_check_raises_at_once():
    guard = FiniteLossGuard("DINO", ADVICE)
    guard.check(torch.tensor(2.0), 0)
    with pytest.raises(FloatingPointError, match=r"non-finite DINO loss .* at global step 1;"):
        guard.check(torch.tensor(float("nan")), 1)


def test_non_finite_tensors_names_them():
    layer = torch.nn.BatchNorm1d(3)
    assert non_finite_tensors(layer) == []
    with torch.no_grad():
        layer.weight[1] = float("nan")
        layer.running_var[0] = float("inf")
    assert non_finite_tensors(layer) == ["weight", "running_var"]
