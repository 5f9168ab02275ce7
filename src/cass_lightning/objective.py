"""The CASS objective with its opt-in remedies against collapse, framework-free.

With everything off (the default) the objective is exactly the paper's: ``cass_loss(cnn(x),
vit(x))``, both arms receiving gradients. Each remedy changes one thing and they compose:

- **predictor** (``alternate`` or ``symmetric``): a small MLP on the online arm's output predicts
  the other arm's output, which is held fixed (stop-gradient), as in SimSiam/BYOL. ``alternate``
  makes the CNN the online arm on even steps and the ViT on odd steps; ``symmetric`` uses both
  directions every step (twice the predictor cost, no idle parameters under DDP).
- **EMA targets**: the target of each arm's prediction is a momentum copy of the *other* arm
  (``CASSModule(ema_momentum=...)`` keeps the copies; they are passed in here as
  ``cnn_target``/``vit_target``). Targets never receive gradients.
- **variance / covariance**: VICReg's terms on each arm's L2-normalised outputs scaled by
  ``sqrt(dim)`` (:func:`~cass_lightning.losses.variance_term`), added with their weights.
- **two views**: each arm sees its own augmentation; the CNN of view 1 is compared with the ViT of
  view 2 and the other way round, and the two losses averaged (crossed and symmetrised).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cass_lightning.encoders import build_projector
from cass_lightning.losses import DEFAULT_EPS, cass_loss, covariance_term, variance_term

PREDICTOR_MODES = ("none", "alternate", "symmetric")


def build_predictor(dim: int, hidden_dim: int = 512) -> nn.Sequential:
    """SimSiam's predictor: the projector's Linear-BN-ReLU-Linear shape, ``dim`` to ``dim``
    through a ``hidden_dim`` bottleneck."""
    return build_projector(dim, dim, hidden_dim)


def view_pairs(num_views: int) -> list[tuple[int, int]]:
    """``(cnn view, vit view)`` index pairs that are compared: the same view for one view,
    crossed both ways for two."""
    if num_views == 1:
        return [(0, 0)]
    if num_views == 2:
        return [(0, 1), (1, 0)]
    raise ValueError(f"CASS compares one view or two views per image, got {num_views}")


class CASSObjective(nn.Module):
    """Computes the loss terms from each arm's outputs per view.

    Holds the predictors (when on), so they are trained and saved with the module that owns it.

    Args:
        dim: width of the compared outputs.
        predictor: ``none`` (paper), ``alternate`` or ``symmetric``.
        predictor_hidden_dim: bottleneck width of each predictor.
        variance_weight, covariance_weight: weights of the VICReg terms (0 = off).
        variance_target: the std the variance hinge asks of each scaled dimension.
        eps: norm floor of the cosine.
    """

    def __init__(
        self,
        dim: int,
        predictor: str = "none",
        predictor_hidden_dim: int = 512,
        variance_weight: float = 0.0,
        covariance_weight: float = 0.0,
        variance_target: float = 1.0,
        eps: float = DEFAULT_EPS,
    ) -> None:
        super().__init__()
        if predictor not in PREDICTOR_MODES:
            raise ValueError(f"predictor must be one of {PREDICTOR_MODES}, got {predictor!r}")
        if variance_weight < 0 or covariance_weight < 0:
            raise ValueError(
                "variance_weight and covariance_weight must be >= 0, got "
                f"{variance_weight} and {covariance_weight}"
            )
        self.mode = predictor
        self.variance_weight = float(variance_weight)
        self.covariance_weight = float(covariance_weight)
        self.variance_target = float(variance_target)
        self.eps = eps
        self.predictors = (
            nn.ModuleDict(
                {arm: build_predictor(dim, predictor_hidden_dim) for arm in ("cnn", "vit")}
            )
            if predictor != "none"
            else None
        )

    def online_arms(self, step: int, training: bool) -> tuple[str, ...]:
        """Which arms predict (and receive the alignment gradient) at this step."""
        if self.mode == "alternate" and training:
            return ("cnn",) if step % 2 == 0 else ("vit",)
        return ("cnn", "vit")

    def forward(
        self,
        cnn: Sequence[Tensor],
        vit: Sequence[Tensor],
        cnn_target: Sequence[Tensor] | None = None,
        vit_target: Sequence[Tensor] | None = None,
        step: int = 0,
        training: bool = True,
    ) -> dict[str, Tensor]:
        """Loss terms from per-view outputs (``cnn[i]`` = CNN output on view ``i``).

        Returns ``loss`` (what is minimised), ``align`` (the cosine part) and, when on,
        ``variance`` and ``covariance`` (unweighted).
        """
        if len(cnn) != len(vit):
            raise ValueError(f"got {len(cnn)} CNN views and {len(vit)} ViT views")
        pairs = view_pairs(len(cnn))
        ema = cnn_target is not None or vit_target is not None
        if ema and (cnn_target is None or vit_target is None):
            raise ValueError("EMA targets are needed for both arms or for neither")
        terms: list[Tensor] = []
        if self.predictors is None and not ema:
            # The paper: one symmetric term per pair, gradients to both arms.
            terms = [cass_loss(cnn[a], vit[b], eps=self.eps) for a, b in pairs]
        else:
            outputs = {"cnn": cnn, "vit": vit}
            targets = {"cnn": cnn_target, "vit": vit_target} if ema else None
            for a, b in pairs:
                views = {"cnn": a, "vit": b}
                for arm in self.online_arms(step, training):
                    other = "vit" if arm == "cnn" else "cnn"
                    online = outputs[arm][views[arm]]
                    if self.predictors is not None:
                        online = self.predictors[arm](online)
                    if targets is not None:
                        target = targets[other][views[other]].detach()
                    else:
                        target = outputs[other][views[other]].detach()
                    terms.append(cass_loss(online, target, eps=self.eps))
        align = sum(terms) / len(terms)
        result = {"align": align}
        loss = align
        everything = [*cnn, *vit]
        if self.variance_weight > 0:
            result["variance"] = sum(
                variance_term(z, self.variance_target, self.eps) for z in everything
            ) / len(everything)
            loss = loss + self.variance_weight * result["variance"]
        if self.covariance_weight > 0:
            result["covariance"] = sum(covariance_term(z, self.eps) for z in everything) / len(
                everything
            )
            loss = loss + self.covariance_weight * result["covariance"]
        result["loss"] = loss
        return result
