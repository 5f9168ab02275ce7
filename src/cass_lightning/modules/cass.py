"""CASSModule: a CNN and a ViT trained together on one augmented view, no Hydra needed.

Usable on its own::

    from cass_lightning import CASSModule
    model = CASSModule(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64, pretrained=False)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: tensor, (x, y) or {"image": x}

Constructor arguments are plain values so ``save_hyperparameters`` and ``load_from_checkpoint``
work without any config system.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from cass_lightning.batches import same_size_views
from cass_lightning.checks import check_positive
from cass_lightning.encoders import freeze_stages, keep_frozen_in_eval
from cass_lightning.export import ExportedArm
from cass_lightning.losses import DEFAULT_EPS, cosine_similarity, normalized_std
from cass_lightning.modules.base import PAPER_OPTIMIZER, PretrainingModule
from cass_lightning.modules.ema import EMATargets
from cass_lightning.modules.encoder_settings import ARMS
from cass_lightning.modules.legacy import upgrade_cass_hparams
from cass_lightning.modules.objective import CASSObjective, Remedies
from cass_lightning.modules.optim import arm_param_groups


class CASSModule(PretrainingModule):
    """Cross Architectural Self-Supervision: ``loss = mean(2 - 2 cos(cnn(x), vit(x)))``.

    Args:
        head: ``logits`` (paper), ``projector`` or ``features``; see ``encoders``.
        head_dim: width of the compared vectors for ``logits``/``projector`` (paper: 1000).
        projector_hidden_dim: hidden width of the projector MLP.
        loss_eps: floor on vector norms in the loss.
        remedies: opt-in remedies against collapse (see :class:`~.objective.Remedies`); empty
            or None is exactly the paper.
        settings: the arguments every method takes (:class:`~.base.PretrainingModule`): ``cnn``,
            ``vit``, ``img_size``, ``in_chans``, ``pretrained``, ``cnn_weights_file``,
            ``vit_weights_file``, ``cnn_kwargs``, ``vit_kwargs``, ``mean``, ``std``,
            ``batch_lr_factor``, and ``optimizer`` (``{name: adam|adamw|sgd, lr,
            weight_decay, betas, eps, momentum}`` plus per-arm overrides ``cnn_lr``, ``vit_lr``,
            ``cnn_weight_decay``, ``vit_weight_decay``) and ``scheduler`` (``{name:
            cyclic_cosine|warmup_cosine|none, ...}``; the paper's: ``CosineAnnealingLR(T_max=16,
            eta_min=1e-6)`` stepped every iteration).
    """

    method = "cass"
    method_name = "CASS"
    #: The paper's optimiser; ``<arm>_lr`` and ``<arm>_weight_decay`` override the shared
    #: values for one arm.
    default_optimizer: ClassVar[dict[str, Any]] = {
        **PAPER_OPTIMIZER, "cnn_lr": None, "vit_lr": None,
        "cnn_weight_decay": None, "vit_weight_decay": None,
    }  # fmt: skip
    ema_copies_buffers = True

    def __init__(
        self,
        head: str = "logits",
        head_dim: int = 1000,
        projector_hidden_dim: int = 2048,
        loss_eps: float = DEFAULT_EPS,
        remedies: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.remedies = r = Remedies.from_dict(remedies)
        self.arm_hyperparameters()  # refuse a non-positive lr before anything is built
        common = dict(head=head, head_dim=head_dim, projector_hidden_dim=projector_hidden_dim)
        self.cnn, self.cnn_head = self.build_arm("cnn", **common)
        self.vit, self.vit_head = self.build_arm("vit", **common)
        if head == "features" and self.cnn.num_features != self.vit.num_features:
            raise ValueError(
                f"head='features' compares pooled features directly, but {self.encoders.cnn} "
                f"gives {self.cnn.num_features} and {self.encoders.vit} gives "
                f"{self.vit.num_features}; use head='projector' (or 'logits') to map both arms "
                "to one width"
            )
        self.frozen_modules = {
            "cnn": freeze_stages(self.cnn, r.cnn_freeze_stages),
            "vit": freeze_stages(self.vit, r.vit_freeze_stages),
        }
        self.train(self.training)  # Lightning keeps the train/eval modes it finds: set them now
        dim = self.cnn.num_features if head == "features" else head_dim
        self.objective = CASSObjective(
            dim, predictor=r.predictor, predictor_hidden_dim=r.predictor_hidden_dim,
            variance_weight=r.variance_weight, covariance_weight=r.covariance_weight,
            variance_target=r.variance_target, eps=loss_eps,
        )  # fmt: skip
        self.ema: EMATargets | None = None
        if r.ema_momentum is not None:
            self.ema = EMATargets(self.arms())
            self.use_ema("model.remedies.ema_momentum", r.ema_momentum, r.ema_momentum_end)

    @classmethod
    def _upgrade(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return upgrade_cass_hparams(hp, accumulates_gradients=cls.accumulates_gradients)

    #: ``True`` only in the notebook-defect ablation (``modules.ablation``).
    accumulates_gradients = False

    # ----------------------------------------------------------------- forward
    def arms(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        """Each arm's ``(timm backbone, head after it)``."""
        return {"cnn": (self.cnn, self.cnn_head), "vit": (self.vit, self.vit_head)}

    def embed_cnn(self, images: Tensor) -> Tensor:
        return self.cnn_head(self.cnn(images))

    def embed_vit(self, images: Tensor) -> Tensor:
        return self.vit_head(self.vit(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Both arms' vectors for the same images: ``(z_cnn, z_vit)``."""
        return self.embed_cnn(images), self.embed_vit(images)

    # ------------------------------------------------------- protocol and export
    def trained_arms(self) -> tuple[str, ...]:
        return ARMS

    def arm_backbone(self, arm: str) -> nn.Module:
        return self.arms()[arm][0]

    def data_views(self) -> str:
        return "pair" if self.remedies.two_views else "paper"

    def has_idle_parameters(self) -> bool:
        # The alternating predictor trains one arm's predictor per step.
        return self.remedies.predictor == "alternate"

    def export_arms(self, network: str) -> dict[str, ExportedArm]:
        """Both arms with their heads."""
        specs = self.specs()
        return {arm: ExportedArm(specs[arm], *modules) for arm, modules in self.arms().items()}

    def export_meta(self) -> dict[str, Any]:
        hp = self.hparams
        return {"head": hp.head, "head_dim": hp.head_dim, "img_size": hp.img_size,
                "mean": list(hp.mean), "std": list(hp.std)}  # fmt: skip

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return self.ema.pairs(self.arms()) if self.ema is not None else []

    # ---------------------------------------------------------------- training
    def training_views(self, batch: Any) -> list[Tensor]:
        views = same_size_views(batch)
        two = self.data_views() == "pair"
        if len(views) != (2 if two else 1):
            if two:
                raise ValueError(
                    f"remedies.two_views=True needs batches of two views, got {len(views)}; use "
                    "MedicalDataModule(train_views='pair') (cass-pretrain does) or give "
                    "([v1, v2], labels)"
                )
            raise ValueError(
                f"got a batch of {len(views)} views; CASS compares one view unless "
                "remedies.two_views=True (then exactly two)"
            )
        return views

    def _compare(self, views: list[Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, z_cnn, z_vit)`` on ``views``; logs the cosine between the arms, the pooled
        features' spread and, with remedies on, the parts of the loss."""
        outputs = [self(v) for v in views]
        cnn, vit = [o[0] for o in outputs], [o[1] for o in outputs]
        targets = self.ema.outputs(views) if self.ema is not None else None
        terms = self.objective(
            cnn, vit,
            cnn_target=targets[0] if targets else None,
            vit_target=targets[1] if targets else None,
            step=self.global_step, training=stage == "train",
        )  # fmt: skip
        loss, z_cnn, z_vit = terms["loss"], cnn[0], vit[0]
        eps = self.hparams.loss_eps
        stats = {f"{stage}/cosine": cosine_similarity(z_cnn, z_vit, eps)}
        if len(terms) > 2:  # remedies on: the parts of the loss as well
            stats.update({f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"})
        # The pooled features can stay spread while the compared outputs collapse (BatchNorm
        # keeps a CNN's features apart): log both, per arm.
        for arm, pooled in self.pooled.items():
            stats[f"{stage}/{arm}_pooled_std"] = normalized_std(pooled, eps)
        self.log_dict(stats, on_step=stage == "train", on_epoch=True,
                      batch_size=views[0].shape[0])  # fmt: skip
        return loss, z_cnn, z_vit

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        loss, z_cnn, z_vit = self._compare(views, "train")
        return loss, {"cnn": z_cnn, "vit": z_vit}

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        views = same_size_views(batch)
        loss, z_cnn, z_vit = self._compare(views, "val")
        eps = self.hparams.loss_eps
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=views[0].shape[0])
        self.log_dict({"val/cnn_std": normalized_std(z_cnn, eps),
                       "val/vit_std": normalized_std(z_vit, eps)},
                      on_epoch=True, batch_size=views[0].shape[0])  # fmt: skip
        return loss

    def on_train_start(self) -> None:
        self.train(True)
        super().on_train_start()

    def train(self, mode: bool = True) -> CASSModule:
        """As ``nn.Module.train``, but frozen stages keep their BatchNorm statistics."""
        super().train(mode)
        for arm, frozen in getattr(self, "frozen_modules", {}).items():
            keep_frozen_in_eval(getattr(self, arm), frozen)
        return self

    # --------------------------------------------------------------- optimiser
    def arm_hyperparameters(self) -> dict[str, dict[str, float]]:
        """Effective lr and weight decay of each arm (per-arm overrides over the shared ones,
        times ``batch_lr_factor``); a learning rate that is not > 0 is refused."""
        opt = self.optimizer_cfg
        factor = check_positive("batch_lr_factor", self.hparams.batch_lr_factor)
        result = {}
        for arm in ARMS:
            own_lr, own_wd = opt.get(f"{arm}_lr"), opt.get(f"{arm}_weight_decay")
            name = f"model.optimizer.{arm}_lr" if own_lr is not None else "model.optimizer.lr"
            result[arm] = {
                "lr": check_positive(name, opt["lr"] if own_lr is None else own_lr) * factor,
                "weight_decay": float(opt.get("weight_decay", 0.0) if own_wd is None else own_wd),
            }
        return result

    def param_groups(self) -> list[dict[str, Any]]:
        arms, predictors = self.arm_hyperparameters(), self.objective.predictors
        groups = []
        for arm, (backbone, head) in self.arms().items():
            modules = [backbone, head] + ([predictors[arm]] if predictors is not None else [])
            groups += arm_param_groups(arm, modules, layer_decay=self.remedies.layer_decay,
                                       **arms[arm])  # fmt: skip
        return groups
