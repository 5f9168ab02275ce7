"""Loss functions and collapse statistics as plain tensor functions (no Lightning).

- :func:`cass_loss`: the paper's loss. CASS feeds one augmented view to a CNN and to a ViT and
  pulls their outputs together with ``2 - 2 * cos(T(x'), R(x'))`` per sample, averaged over the
  batch (range [0, 4]); both arms receive gradients. How it is combined with the opt-in
  remedies is :mod:`cass_lightning.modules.objective`.
- :func:`cosine_similarity`, :func:`normalized_std`: the collapse signals a run logs.
- :func:`variance_term`, :func:`covariance_term`: VICReg's terms, used by a remedy.
- :func:`sigmoid_focal_loss`: the paper's fine-tuning loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Lower bound on the norm used for L2 normalisation. Large enough that the gradient of a
#: (near-)zero vector, about 1/eps, stays finite when cast back to fp16 (max 65504); far below
#: the norm of any real logit or projector vector, so it does not change the loss in practice.
DEFAULT_EPS = 1e-4


def cass_loss(z_cnn: Tensor, z_vit: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Mean over the batch of ``2 - 2 * cos(z_cnn, z_vit)``.

    Computed in fp32 whatever the input dtype (also under autocast), so bf16/fp16 embeddings
    with tiny norms do not underflow to 0/0.

    Args:
        z_cnn: ``(batch, dim)`` output of the CNN arm.
        z_vit: ``(batch, dim)`` output of the ViT arm, same shape.
        eps: floor on the vector norm before dividing.
    """
    if z_cnn.shape != z_vit.shape:
        raise ValueError(
            "cass_loss needs equal shapes, got "
            f"CNN {tuple(z_cnn.shape)} and ViT {tuple(z_vit.shape)}"
        )
    if z_cnn.ndim != 2:
        raise ValueError(f"cass_loss expects (batch, dim) tensors, got {z_cnn.ndim} dims")
    with torch.autocast(device_type=z_cnn.device.type, enabled=False):
        cnn = F.normalize(z_cnn.float(), dim=-1, eps=eps)
        vit = F.normalize(z_vit.float(), dim=-1, eps=eps)
        return (2.0 - 2.0 * (cnn * vit).sum(dim=-1)).mean()


def cosine_similarity(z_cnn: Tensor, z_vit: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Mean cosine between the two arms' outputs (1.0 means the arms agree fully)."""
    with torch.no_grad(), torch.autocast(device_type=z_cnn.device.type, enabled=False):
        cnn = F.normalize(z_cnn.float(), dim=-1, eps=eps)
        vit = F.normalize(z_vit.float(), dim=-1, eps=eps)
        return (cnn * vit).sum(dim=-1).mean()


def normalized_std(z: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """Std over the batch of the L2-normalised embeddings, averaged over dimensions.

    A collapse alarm (as in SimSiam): about ``1/sqrt(dim)`` for well-spread outputs, falling to 0
    when every image maps to the same direction.
    """
    with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
        return F.normalize(z.float(), dim=-1, eps=eps).std(dim=0).mean()


def _spread_scaled(z: Tensor, eps: float) -> Tensor:
    """L2-normalised rows times sqrt(dim): a well-spread batch then has ~unit variance per
    dimension, whatever the width. On raw outputs a variance term is met by a large shared mean
    direction (the collapse it should prevent); on the sphere it is not."""
    return F.normalize(z.float(), dim=-1, eps=eps) * z.shape[-1] ** 0.5


def variance_term(z: Tensor, target: float = 1.0, eps: float = DEFAULT_EPS) -> Tensor:
    """VICReg's variance hinge on the L2-normalised, sqrt(dim)-scaled embeddings:
    ``mean_d relu(target - sqrt(var_d + 1e-4))``. 0 while every dimension's std stays at or above
    ``target`` (1 = as spread as the sphere allows on average); rises as the batch collapses."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"variance_term needs a (batch >= 2, dim) tensor, got {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        x = _spread_scaled(z, eps)
        std = torch.sqrt(x.var(dim=0) + 1e-4)
        return F.relu(target - std).mean()


def covariance_term(z: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """VICReg's covariance term on the same scaled embeddings: the squared off-diagonal entries
    of the batch covariance, summed and divided by ``dim``. Pushes dimensions to carry different
    information, so spread cannot be met by a few correlated directions."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"covariance_term needs a (batch >= 2, dim) tensor, got {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        x = _spread_scaled(z, eps)
        x = x - x.mean(dim=0)
        dim = x.shape[1]
        cov = (x.T @ x) / (x.shape[0] - 1)
        off_diagonal = cov - torch.diag(torch.diagonal(cov))
        return off_diagonal.pow(2).sum() / dim


class CASSLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`cass_loss` for code that wants a loss object."""

    def __init__(self, eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, z_cnn: Tensor, z_vit: Tensor) -> Tensor:
        return cass_loss(z_cnn, z_vit, eps=self.eps)


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 1.0,
    gamma: float = 2.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss on one-hot or multi-hot targets, mean over every element.

    The fine-tuning loss of the paper (alpha 1, gamma 2, per-class weights). Per element it is
    ``alpha * weight[c] * (1 - p_t) ** gamma * BCE(logit, target)``, i.e.
    ``torchvision.ops.sigmoid_focal_loss`` with ``alpha=-1`` (no balancing) scaled by ``alpha``.

    ``alpha`` follows the reference notebooks, where it is a plain scale (1 means no alpha
    weighting), *not* torchvision's positive/negative balance: torchvision's ``alpha=1`` would
    give every negative label zero loss.

    Args:
        logits: ``(batch, classes)`` raw scores.
        targets: same shape, 0/1 (one-hot for multi-class, multi-hot for multi-label).
        alpha: global scale of the loss.
        gamma: focusing exponent; 0 gives plain (weighted) BCE.
        weight: optional ``(classes,)`` per-class weights, broadcast over the batch.
    """
    if logits.shape != targets.shape:
        raise ValueError(
            f"sigmoid_focal_loss needs logits and targets of one shape, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits, targets = logits.float(), targets.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = alpha * bce * (1 - p_t) ** gamma
        if weight is not None:
            loss = loss * weight.to(loss).reshape(*([1] * (loss.ndim - 1)), -1)
        return loss.mean()
