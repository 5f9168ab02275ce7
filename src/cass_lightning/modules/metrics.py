"""Fine-tuning metrics from raw logits: torchmetrics objects, each fed the inputs it expects.

- ``multiclass`` (integer targets): ``acc`` (plain accuracy), ``f1_macro``, ``balanced_acc``
  (mean recall over the classes present, ISIC-2019's metric), ``auroc`` (macro, one-vs-rest on
  softmax) and ``f1_micro``: the reference notebooks' score, multi-label micro F1 of
  ``sigmoid(logits) > 0.5`` against one-hot targets (kept only for comparison with the paper).
- ``multilabel`` (multi-hot targets): ``f1_macro``, ``f1_micro``, ``auroc`` (macro) and
  ``exact_match`` (every label of a sample right), all on ``sigmoid(logits)`` at 0.5.

``auroc`` averages only over classes with both positives and negatives in the evaluated set
(torchmetrics' macro AUROC counts an absent class as 0, which misleads on small splits); it is
NaN when no class qualifies.

:class:`PerClassBreakdown` adds what a study report needs beside the averages: F1 and support per
class and (multi-class) the confusion matrix, from the same predictions (argmax of the softmax;
``sigmoid > 0.5`` for multi-label); :func:`f1_macro_scope` says over which classes the macro F1
was averaged (a class absent from a split and never predicted is left out of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelExactMatch,
    MultilabelF1Score,
    MultilabelStatScores,
)
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from cass_lightning.checks import check_choice

TASKS = ("multiclass", "multilabel")
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "multiclass": ("acc", "f1_macro", "balanced_acc", "auroc", "f1_micro"),
    "multilabel": ("f1_macro", "f1_micro", "auroc", "exact_match"),
}


class PresentClassAUROC(Metric):
    """Macro AUROC over the classes that have both positive and negative samples."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.target.append(target.detach().long())

    def compute(self) -> Tensor:
        probs, target = dim_zero_cat(self.probs), dim_zero_cat(self.target)
        scores = [
            binary_auroc(probs[:, c], target[:, c])
            for c in range(target.shape[1])
            if 0 < int(target[:, c].sum()) < target.shape[0]
        ]
        if not scores:
            return torch.tensor(float("nan"), device=probs.device)
        return torch.stack(scores).mean()


class BalancedAccuracy(Metric):
    """Mean recall over the classes present in the targets (scikit-learn's balanced accuracy).

    torchmetrics' macro recall also averages in a class that is only predicted, never present,
    as a recall of 0, which understates the score on small splits.
    """

    full_state_update = False

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("correct", default=torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("support", default=torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        # index_add_ rather than a boolean mask and bincount: both read sizes back to the host.
        target = target.long()
        hits = (probs.argmax(dim=-1) == target).to(self.correct)
        self.correct.index_add_(0, target, hits)
        self.support.index_add_(0, target, torch.ones_like(hits))

    def compute(self) -> Tensor:
        present = self.support > 0
        return (self.correct[present] / self.support[present]).mean()


class ClassificationMetrics(nn.Module):
    """Every metric of one task; ``update`` takes logits and the batch's targets as given.

    ``validate=False`` skips torchmetrics' checks of each batch's targets (they read values back
    to the host): for the training metrics, updated every step on targets the data module made.
    Updates never read back otherwise: thresholded metrics get 0/1 predictions (torchmetrics
    would test float inputs for being probabilities), so only ``compute`` waits for the device.
    """

    def __init__(self, task: str, num_classes: int, validate: bool = True) -> None:
        super().__init__()
        check_choice("metrics task", task, TASKS)
        if num_classes < 2:
            raise ValueError(f"metrics need at least 2 classes, got {num_classes}")
        self.task, self.num_classes = task, num_classes
        c, v = num_classes, {"validate_args": validate}
        # name -> (metric, which inputs it reads; see _inputs)
        specs: dict[str, tuple[Metric, str]]
        if task == "multiclass":
            specs = {
                "acc": (MulticlassAccuracy(c, average="micro", **v), "softmax"),
                "f1_macro": (MulticlassF1Score(c, average="macro", **v), "softmax"),
                "balanced_acc": (BalancedAccuracy(c), "softmax"),
                "auroc": (PresentClassAUROC(), "softmax_onehot"),
                "f1_micro": (MultilabelF1Score(c, average="micro", **v), "above_half_onehot"),
            }
        else:
            specs = {
                "f1_macro": (MultilabelF1Score(c, average="macro", **v), "above_half"),
                "f1_micro": (MultilabelF1Score(c, average="micro", **v), "above_half"),
                "auroc": (PresentClassAUROC(), "sigmoid"),
                "exact_match": (MultilabelExactMatch(c, **v), "above_half"),
            }
        self.metrics = nn.ModuleDict({name: metric for name, (metric, _) in specs.items()})
        self.inputs = {name: kind for name, (_, kind) in specs.items()}
        self._updated = False

    def _inputs(self, logits: Tensor, targets: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        logits = logits.detach().float()
        sigmoid = torch.sigmoid(logits)
        above_half = (sigmoid > 0.5).long()  # what the metrics' threshold of 0.5 gives
        if self.task == "multilabel":
            labels = targets.detach().long()
            return {"sigmoid": (sigmoid, labels), "above_half": (above_half, labels)}
        labels = targets.detach().long()
        onehot = F.one_hot(labels, self.num_classes)
        probs = logits.softmax(dim=-1)
        return {
            "softmax": (probs, labels),
            "softmax_onehot": (probs, onehot),
            "above_half_onehot": (above_half, onehot),
        }

    def update(self, logits: Tensor, targets: Tensor) -> None:
        inputs = self._inputs(logits, targets)
        for name, metric in self.metrics.items():
            metric.update(*inputs[self.inputs[name]])
        self._updated = True

    def compute(self) -> dict[str, Tensor]:
        """Every metric over what was seen since the last reset; ``{}`` when nothing was."""
        if not self._updated:
            return {}
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self._updated = False


def build_metrics(
    multi_label: bool, num_classes: int, validate: bool = True
) -> ClassificationMetrics:
    """The metrics for a dataset: ``multilabel`` for multi-hot targets, else ``multiclass``
    (``validate``: see :class:`ClassificationMetrics`)."""
    task = "multilabel" if multi_label else "multiclass"
    return ClassificationMetrics(task, num_classes, validate)


def f1_and_support(
    tp: Sequence[int], fp: Sequence[int], fn: Sequence[int]
) -> dict[str, list[float | None] | list[int]]:
    """Per-class ``f1 = 2 tp / (2 tp + fp + fn)`` and ``support = tp + fn``.

    F1 is ``None`` for a class with no support and no prediction: there is nothing to score, and
    a 0 (torchmetrics' convention) would read as a failure in a per-class table.
    """
    f1: list[float | None] = []
    for t, p, n in zip(tp, fp, fn, strict=True):
        denominator = 2 * int(t) + int(p) + int(n)
        f1.append(2 * int(t) / denominator if denominator else None)
    return {"f1": f1, "support": [int(t) + int(n) for t, n in zip(tp, fn, strict=True)]}


def f1_macro_scope(
    per_class: dict[str, Any] | None, classes: Sequence[str], multi_label: bool
) -> dict[str, Any]:
    """Over which classes ``f1_macro`` was averaged, from :class:`PerClassBreakdown`'s
    ``per_class`` of the same pass, so a results file says when a class was left out.

    torchmetrics' multi-class macro F1 skips a class that is neither present nor predicted
    (its per-class F1 is ``None`` here); its multi-label macro F1 keeps every label (such a
    label scores 0). ``f1_macro_classes`` names the classes averaged, ``f1_macro_left_out``
    the others, ``f1_macro_over`` says "K of C classes"; all ``None`` without a breakdown.
    """
    if per_class is None:
        return {"f1_macro_classes": None, "f1_macro_left_out": None, "f1_macro_over": None}
    names = [str(name) for name in classes]
    scores = per_class["f1"]
    over = names if multi_label else [n for n, f1 in zip(names, scores) if f1 is not None]
    return {
        "f1_macro_classes": over,
        "f1_macro_left_out": [name for name in names if name not in over],
        "f1_macro_over": f"{len(over)} of {len(names)} classes",
    }


class PerClassBreakdown(nn.Module):
    """Per-class F1 and support, and the confusion matrix (rows: true class, columns: predicted;
    multi-class only), accumulated over an evaluation pass from logits and the batch targets.

    Built from torchmetrics' ``MulticlassConfusionMatrix`` / ``MultilabelStatScores`` (summed
    across processes under DDP); their states are not saved in checkpoints.
    """

    def __init__(self, multi_label: bool, num_classes: int) -> None:
        super().__init__()
        self.multi_label, self.num_classes = multi_label, num_classes
        self.counts: Metric = (
            MultilabelStatScores(num_classes, threshold=0.5, average=None)
            if multi_label
            else MulticlassConfusionMatrix(num_classes)
        )
        self._updated = False

    def update(self, logits: Tensor, targets: Tensor) -> None:
        logits = logits.detach().float()
        if self.multi_label:
            self.counts.update(torch.sigmoid(logits), targets.detach().long())
        else:
            self.counts.update(logits.softmax(dim=-1), targets.detach().long())
        self._updated = True

    def compute(self) -> dict[str, Any] | None:
        """``{"per_class": {"f1", "support"}, "confusion"}`` as plain lists (``confusion`` is
        ``None`` for multi-label data); ``None`` when nothing was seen since the last reset."""
        if not self._updated:
            return None
        counts = self.counts.compute().long().cpu()
        if self.multi_label:  # columns: tp, fp, tn, fn, support
            tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 3]
            return {"per_class": f1_and_support(tp.tolist(), fp.tolist(), fn.tolist()),
                    "confusion": None}  # fmt: skip
        tp = counts.diagonal()
        fp, fn = counts.sum(dim=0) - tp, counts.sum(dim=1) - tp
        return {"per_class": f1_and_support(tp.tolist(), fp.tolist(), fn.tolist()),
                "confusion": counts.tolist()}  # fmt: skip

    def reset(self) -> None:
        self.counts.reset()
        self._updated = False
