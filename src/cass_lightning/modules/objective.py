"""The CASS objective with its opt-in remedies against collapse, framework-free.

With everything off (the default) the objective is exactly the paper's: ``cass_loss(cnn(x),
vit(x))``, both arms receiving gradients. Each remedy changes one thing and they compose:

- **predictor** (``alternate`` or ``symmetric``): a small MLP on the online arm's output predicts
  the other arm's output, which is held fixed (stop-gradient), as in SimSiam/BYOL. ``alternate``
  makes the CNN the online arm on even steps and the ViT on odd steps; ``symmetric`` uses both
  directions every step (twice the predictor cost, no idle parameters under DDP).
- **EMA targets**: the target of each arm's prediction is a momentum copy of the *other* arm
  (``CASSModule(remedies={"ema_momentum": ...})`` keeps the copies; they are passed in here as
  ``cnn_target``/``vit_target``). Targets never receive gradients.
- **variance / covariance**: VICReg's terms on each arm's L2-normalised outputs scaled by
  ``sqrt(dim)`` (:func:`~cass_lightning.losses.variance_term`), added with their weights.
- **two views**: each arm sees its own augmentation; the CNN of view 1 is compared with the ViT of
  view 2 and the other way round, and the two losses averaged (crossed and symmetrised).

The optimiser-side remedies (layer-wise lr decay, frozen stages) are applied by the module;
:class:`Remedies` holds every setting, checked, with the paper's values as defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import Tensor, nn

from cass_lightning.checks import check_choice, check_int, check_keys, check_positive
from cass_lightning.encoders import build_projector
from cass_lightning.losses import DEFAULT_EPS, cass_loss, covariance_term, variance_term

PREDICTOR_MODES = ("none", "alternate", "symmetric")


@dataclass(frozen=True)
class Remedies:
    """The opt-in remedies against collapse, all off by default (= the paper), composable.

    Attributes:
        layer_decay: layer-wise lr decay per arm, e.g. 0.75 (the stem moves least); None: off.
        cnn_freeze_stages, vit_freeze_stages: freeze the first N stages of an arm (ResNet: stem,
            layer1..layer4; ViT: embeddings, then blocks), BatchNorm statistics included.
        ema_momentum: keep a momentum copy of each arm as the other arm's target (e.g. 0.99),
            raised along a cosine to ``ema_momentum_end`` over the run; None: off.
        variance_weight, covariance_weight, variance_target: VICReg terms on each arm's
            L2-normalised outputs scaled by sqrt(dim) (covariance alone is lowered by shrinking
            the spread, so it comes with a variance weight).
        predictor: ``none`` | ``alternate`` | ``symmetric``: predictor MLP + stop-gradient.
        predictor_hidden_dim: the predictor's bottleneck width.
        two_views: each arm sees its own augmentation (the data must yield two views).
    """

    layer_decay: float | None = None
    cnn_freeze_stages: int = 0
    vit_freeze_stages: int = 0
    ema_momentum: float | None = None
    ema_momentum_end: float = 1.0
    variance_weight: float = 0.0
    covariance_weight: float = 0.0
    variance_target: float = 1.0
    predictor: str = "none"
    predictor_hidden_dim: int = 512
    two_views: bool = False

    def __post_init__(self) -> None:
        name = "model.remedies"
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"{name}.layer_decay must be in (0, 1], got {self.layer_decay}")
        check_int(f"{name}.cnn_freeze_stages", self.cnn_freeze_stages, 0)
        check_int(f"{name}.vit_freeze_stages", self.vit_freeze_stages, 0)
        if self.ema_momentum is not None and not (
            0.0 <= self.ema_momentum <= self.ema_momentum_end <= 1.0
        ):
            raise ValueError(
                "need 0 <= ema_momentum <= ema_momentum_end <= 1, got "
                f"{self.ema_momentum} and {self.ema_momentum_end}"
            )
        check_positive(f"{name}.variance_weight", self.variance_weight, allow_zero=True)
        check_positive(f"{name}.covariance_weight", self.covariance_weight, allow_zero=True)
        check_choice(f"{name}.predictor", self.predictor, PREDICTOR_MODES)
        check_int(f"{name}.predictor_hidden_dim", self.predictor_hidden_dim, 1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Remedies:
        """From a plain dict (missing keys: off); an unknown key is refused, not ignored."""
        values = dict(values or {})
        check_keys("model.remedies", values, [f.name for f in fields(cls)])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def any(self) -> bool:
        """Whether anything differs from the paper."""
        return self != Remedies()


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
        check_choice("predictor", predictor, PREDICTOR_MODES)
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
