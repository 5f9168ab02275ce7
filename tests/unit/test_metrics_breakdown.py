"""Per-class F1, support and the confusion matrix against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from cass_lightning.modules.metrics import PerClassBreakdown, build_metrics, f1_and_support


def _logits_for(predicted: list[int], num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``predicted`` (the other classes well below)."""
    logits = torch.full((len(predicted), num_classes), -3.0)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 3.0
    return logits


def test_multi_class_breakdown_matches_hand_computed_values():
    # 4 classes; class 3 is neither present nor predicted.
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    predicted = [0, 1, 1, 2, 2, 2, 0]
    breakdown = PerClassBreakdown(multi_label=False, num_classes=4)
    assert breakdown.compute() is None  # nothing seen yet
    logits = _logits_for(predicted, 4)
    breakdown.update(logits[:3], targets[:3])  # two batches accumulate
    breakdown.update(logits[3:], targets[3:])
    got = breakdown.compute()
    # rows: true class, columns: predicted
    assert got["confusion"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    # tp [2, 1, 2, 0], fp [0, 1, 1, 0], fn [1, 1, 0, 0]: f1 = 2tp / (2tp + fp + fn)
    assert got["per_class"]["f1"] == pytest.approx([0.8, 0.5, 0.8, None])
    assert got["per_class"]["support"] == [3, 2, 2, 0]
    # The macro F1 the app reports averages the same classes (the absent one left out).
    metrics = build_metrics(False, 4)
    metrics.update(logits, targets)
    assert float(metrics.compute()["f1_macro"]) == pytest.approx((0.8 + 0.5 + 0.8) / 3)
    breakdown.reset()
    assert breakdown.compute() is None


def test_multi_label_breakdown_has_no_confusion_and_scores_each_label():
    targets = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    predicted = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    logits = torch.where(predicted.bool(), 2.0, -2.0)  # sigmoid > 0.5 exactly where predicted
    breakdown = PerClassBreakdown(multi_label=True, num_classes=3)
    breakdown.update(logits, targets.float())
    got = breakdown.compute()
    assert got["confusion"] is None
    # label 0: tp 1, fp 0, fn 1; label 1: tp 2, fp 1, fn 0; label 2: never present or predicted
    assert got["per_class"]["f1"] == pytest.approx([2 / 3, 0.8, None])
    assert got["per_class"]["support"] == [2, 2, 0]


def test_f1_and_support_from_counts():
    assert f1_and_support([0, 3], [2, 0], [0, 1]) == {"f1": [0.0, 6 / 7], "support": [0, 4]}
    with pytest.raises(ValueError):
        f1_and_support([1, 2], [0], [0, 0])
