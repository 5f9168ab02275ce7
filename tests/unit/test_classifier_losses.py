"""Fine-tuning losses and metrics: the focal loss against torchvision, metrics by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from cass_lightning.losses import sigmoid_focal_loss
from cass_lightning.modules.metrics import METRIC_NAMES, ClassificationMetrics, build_metrics


# ------------------------------------------------------------------------------ focal loss
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
@pytest.mark.parametrize("alpha", [1.0, 0.25, 2.0])
def test_focal_matches_torchvision_without_balancing(alpha, gamma):
    logits = torch.linspace(-6, 6, 35).reshape(7, 5)
    targets = (torch.arange(35).reshape(7, 5) % 3 == 0).float()
    # Our alpha is the reference notebooks' plain scale: torchvision's alpha=-1 ("ignore") times it.
    expected = alpha * tv_focal(logits, targets, alpha=-1, gamma=gamma, reduction="mean")
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha, gamma), expected, atol=1e-7)


def test_alpha_one_is_not_torchvisions_alpha_one():
    """torchvision's alpha=1 drops every negative; ours keeps them (no alpha weighting)."""
    logits = torch.tensor([[3.0, -1.0]])
    targets = torch.tensor([[0.0, 1.0]])
    ours = sigmoid_focal_loss(logits, targets, alpha=1.0)
    tv_alpha_one = tv_focal(logits, targets, alpha=1.0, gamma=2.0, reduction="mean")
    assert ours > tv_alpha_one


def test_gamma_zero_is_bce():
    logits, targets = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(sigmoid_focal_loss(logits, targets, gamma=0.0), bce)


def test_class_weights_broadcast_over_the_class_dim():
    logits, targets = torch.randn(6, 3), F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    weight = torch.tensor([0.2, 1.0, 0.5])
    per_element = tv_focal(logits, targets, alpha=-1, gamma=2.0, reduction="none")
    expected = (per_element * weight).mean()
    assert torch.allclose(sigmoid_focal_loss(logits, targets, weight=weight), expected)
    ones = sigmoid_focal_loss(logits, targets, weight=torch.ones(3))
    assert torch.allclose(ones, sigmoid_focal_loss(logits, targets))


def test_focal_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="one shape"):
        sigmoid_focal_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_focal_is_fp32_under_half_inputs():
    logits = torch.randn(4, 3).half()
    targets = torch.randint(0, 2, (4, 3)).half()
    assert sigmoid_focal_loss(logits, targets).dtype == torch.float32


# ----------------------------------------------------------------------------- metrics
def logits_for(predicted: list[int], num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``predicted`` and whose sigmoid is > 0.5 only there."""
    return F.one_hot(torch.tensor(predicted), num_classes).float() * 4.0 - 2.0


def test_multiclass_metrics_on_an_imbalanced_confusion():
    # 6 of class 0 (5 right, 1 called 1), 2 of class 1 (1 right, 1 called 0).
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    predicted = [0, 0, 0, 0, 0, 1, 1, 0]
    metrics = build_metrics(False, 2)
    metrics.update(logits_for(predicted[:4], 2), targets[:4])  # two batches, one result
    metrics.update(logits_for(predicted[4:], 2), targets[4:])
    got = {k: float(v) for k, v in metrics.compute().items()}
    assert set(got) == set(METRIC_NAMES["multiclass"])
    recall0, recall1 = 5 / 6, 1 / 2
    assert got["acc"] == pytest.approx(6 / 8)
    assert got["balanced_acc"] == pytest.approx((recall0 + recall1) / 2)  # 2/3, not 3/4
    precision0, precision1 = 5 / 6, 1 / 2
    f1_0 = 2 * precision0 * recall0 / (precision0 + recall0)
    f1_1 = 2 * precision1 * recall1 / (precision1 + recall1)
    assert got["f1_macro"] == pytest.approx((f1_0 + f1_1) / 2)
    # One-hot sigmoid > 0.5 predicts exactly one label per sample: TP 6, FP 2, FN 2.
    assert got["f1_micro"] == pytest.approx(2 * 6 / (2 * 6 + 2 + 2))
    # The logits give class-1 scores 0.88 (predicted 1) or 0.12: AUROC by counting pairs.
    # Positives of class 1: scores {0.88, 0.12}; negatives: {0.12 x5, 0.88}: pairs won
    # 0.88 > 0.12 x5 = 5, 0.88 vs 0.88 tie = 0.5, 0.12 vs 0.12 ties x5 = 2.5, 0.12 < 0.88 = 0.
    assert got["auroc"] == pytest.approx((5 + 0.5 + 2.5) / 12)


def test_paper_micro_f1_counts_extra_sigmoid_positives():
    """Sigmoid > 0.5 may fire on several classes at once: micro F1 sees every one of them."""
    logits = torch.tensor([[2.0, 1.0, -2.0], [-2.0, 2.0, -2.0]])  # sample 0: classes 0 and 1
    metrics = build_metrics(False, 3)
    metrics.update(logits, torch.tensor([0, 1]))
    got = metrics.compute()
    assert float(got["acc"]) == 1.0
    assert float(got["f1_micro"]) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))  # TP 2, FP 1


def test_balanced_accuracy_averages_only_classes_present():
    """A class that is predicted but absent from the targets is not a recall of 0."""
    metrics = build_metrics(False, 3)
    metrics.update(logits_for([0, 2, 1], 3), torch.tensor([0, 0, 1]))
    assert float(metrics.compute()["balanced_acc"]) == pytest.approx((1 / 2 + 1) / 2)


def test_auroc_skips_classes_absent_from_the_split():
    metrics = build_metrics(False, 3)
    metrics.update(torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), torch.tensor([0, 1]))
    assert float(metrics.compute()["auroc"]) == 1.0  # class 2 has no positive: not averaged in
    single = build_metrics(False, 2)
    single.update(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    assert math.isnan(float(single.compute()["auroc"]))


def test_multilabel_metrics_by_hand():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    predicted = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 0, 0]])  # one FP (s1 c2), one FN (s2 c1)
    logits = predicted.float() * 4.0 - 2.0
    metrics = build_metrics(True, 3)
    metrics.update(logits, targets)
    got = {k: float(v) for k, v in metrics.compute().items()}
    assert set(got) == set(METRIC_NAMES["multilabel"])
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["f1_micro"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    f1 = [1.0, 2 * 1 / (2 * 1 + 0 + 1), 2 * 1 / (2 * 1 + 1 + 0)]  # per class: TP/FP/FN
    assert got["f1_macro"] == pytest.approx(sum(f1) / 3)
    # Per-class AUROC by pairs: class 0 perfect (1), class 1 pos {.88,.12} vs neg {.12} -> 0.75,
    # class 2 pos {.88} vs neg {.88,.12} -> 0.75.
    assert got["auroc"] == pytest.approx((1 + 0.75 + 0.75) / 3)


def test_metrics_reset_and_empty_compute():
    metrics = build_metrics(True, 2)
    assert metrics.compute() == {}
    metrics.update(torch.tensor([[2.0, -2.0]]), torch.tensor([[1.0, 0.0]]))
    assert float(metrics.compute()["exact_match"]) == 1.0
    metrics.reset()
    assert metrics.compute() == {}


def test_metrics_refuse_bad_tasks():
    with pytest.raises(ValueError, match="task"):
        ClassificationMetrics("binary", 2)
    with pytest.raises(ValueError, match="2 classes"):
        ClassificationMetrics("multiclass", 1)
