"""Frozen-feature evaluation: pooled features, weighted kNN, and an online linear probe.

Used during pretraining to see whether the representation improves without a separate job
(as solo-learn does), and by the benchmarks. Features are always computed in fp32 with autocast
off: reduced-precision features can change kNN readings a lot (docs/method.md has the figure).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KeepPooled:
    """Forward hook on a classifier: stores its (detached) input, the pooled features, of the
    first forward pass since ``store`` was last cleared (a method that runs a backbone on two
    views keeps the first view's, so the probe's labels match; the owner clears it per batch).

    A class rather than a closure so the module still pickles (``ddp_spawn``, workers)."""

    def __init__(self, store: dict[str, Tensor], arm: str) -> None:
        self.store, self.arm = store, arm

    def __call__(self, module: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if self.arm not in self.store:
            self.store[self.arm] = inputs[0].detach()


def pooled_features(backbone: nn.Module, images: Tensor) -> Tensor:
    """The timm model's pooled, pre-classifier features (what a linear probe reads)."""
    return backbone.forward_head(backbone.forward_features(images), pre_logits=True)


@torch.no_grad()
def extract_features(
    backbone: nn.Module, batches: Iterable, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """``(features, labels)`` of every batch, in fp32 and eval mode (restored afterwards)."""
    was_training = backbone.training
    backbone.eval()
    feats: list[Tensor] = []
    labels: list[Tensor] = []
    try:
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            for images, targets in batches:
                images = images.to(device, dtype=torch.float32)
                feats.append(pooled_features(backbone, images).float().cpu())
                labels.append(torch.as_tensor(targets).cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> Tensor:
    """Class scores of each query from its ``k`` most cosine-similar bank entries, each weighted
    by ``exp(similarity / temperature)`` (the weighted kNN of Wu et al. and DINO)."""
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    k = min(k, bank.shape[0])
    sims, idx = (queries @ bank.T).topk(k, dim=1)
    weights = (sims / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, dtype=torch.float32)
    votes.scatter_add_(1, bank_labels[idx].long(), weights)
    return votes


def knn_accuracy(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy of :func:`knn_predict`."""
    votes = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return float((votes.argmax(dim=1) == query_labels.long()).float().mean())


class LinearProbe(nn.Module):
    """A linear classifier on detached features with its own optimiser, so it never changes
    what the pretraining loss sees."""

    def __init__(self, in_dim: int, num_classes: int, lr: float = 1e-3) -> None:
        super().__init__()
        self.head = nn.Linear(in_dim, num_classes)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=lr)

    def step(self, features: Tensor, labels: Tensor) -> tuple[float, float]:
        """One update on the labelled rows (label >= 0); returns (loss, accuracy) or NaNs."""
        keep = labels >= 0
        if not bool(keep.any()):
            return float("nan"), float("nan")
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.head(features[keep].detach().float())
            loss = F.cross_entropy(logits, labels[keep].long())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        accuracy = (logits.argmax(dim=1) == labels[keep]).float().mean()
        return float(loss.detach()), float(accuracy)

    def step_on_device(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`step` without reading anything back to the host (for every training step of
        a run): the loss is averaged over the labelled rows with a mask rather than selected
        with one (a selection's size is a read-back), and where there are none the head and
        the optimiser's moments are put back. Returns ``(summed loss, correct, labelled rows)``
        as device tensors."""
        keep = labels >= 0
        count = keep.sum()
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.head(features.detach().float())
            per_row = F.cross_entropy(logits, labels.clamp(min=0).long(), reduction="none")
            summed = (per_row * keep).sum()
            loss = summed / count.clamp(min=1)
        tensors = [*self.head.parameters()]
        tensors += [t for s in self.optimizer.state.values() for t in s.values()
                    if isinstance(t, Tensor) and t.device == features.device]  # fmt: skip
        before = [t.detach().clone() for t in tensors]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for t, old in zip(tensors, before, strict=True):
                t.copy_(torch.where(count > 0, t, old))
        correct = ((logits.argmax(dim=1) == labels) & keep).sum()
        return summed.detach(), correct, count

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.head(features.detach().float()).argmax(dim=1)
