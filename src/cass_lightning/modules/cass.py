"""CASSModule: a CNN and a ViT trained together on one augmented view, no Hydra needed.

Usable on its own::

    from cass_lightning import CASSModule
    model = CASSModule(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64, pretrained=False)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: tensor, (x, y) or {"image": x}

Constructor arguments are plain values so ``save_hyperparameters`` and ``load_from_checkpoint``
work without any config system.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from cass_lightning.batches import same_size_views
from cass_lightning.checks import check_positive
from cass_lightning.encoders import freeze_stages, keep_frozen_in_eval
from cass_lightning.export import ExportedArm
from cass_lightning.losses import DEFAULT_EPS, cosine_similarity, normalized_std
from cass_lightning.modules.base import PretrainingModule
from cass_lightning.modules.ema import EMATargets
from cass_lightning.modules.finite import FiniteLossGuard
from cass_lightning.modules.legacy import upgrade_cass_hparams
from cass_lightning.modules.objective import CASSObjective, Remedies
from cass_lightning.modules.optim import arm_param_groups
from cass_lightning.norms import IMAGENET_MEAN, IMAGENET_STD

ARMS = ("cnn", "vit")
#: The paper's optimiser: Adam, lr 1e-3, no weight decay, on both arms. ``<arm>_lr`` and
#: ``<arm>_weight_decay`` override the shared values for one arm.
PAPER_OPTIMIZER: dict[str, Any] = {
    "name": "adam", "lr": 1e-3, "weight_decay": 0.0,
    "cnn_lr": None, "vit_lr": None, "cnn_weight_decay": None, "vit_weight_decay": None,
}  # fmt: skip
#: The paper's schedule: CosineAnnealingLR(T_max=16, eta_min=1e-6) stepped every iteration.
PAPER_SCHEDULER: dict[str, Any] = {"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6}


class CASSModule(PretrainingModule):
    """Cross Architectural Self-Supervision: ``loss = mean(2 - 2 cos(cnn(x), vit(x)))``.

    Args:
        cnn, vit: timm model names of the two arms.
        img_size: input size (ViTs are built for it; CNNs are size-agnostic).
        in_chans: input channels of both arms.
        pretrained: load ImageNet weights (from ``*_weights_file`` offline, else the hub).
        cnn_weights_file, vit_weights_file: ``.safetensors``/``.pth`` weights per arm.
        head: ``logits`` (paper), ``projector`` or ``features``; see ``encoders``.
        head_dim: width of the compared vectors for ``logits``/``projector`` (paper: 1000).
        projector_hidden_dim: hidden width of the projector MLP.
        optimizer: ``{name: adam|adamw|sgd, lr, weight_decay, betas, eps, momentum}`` plus
            per-arm overrides ``cnn_lr``, ``vit_lr``, ``cnn_weight_decay``, ``vit_weight_decay``.
        scheduler: ``{name: cyclic_cosine|warmup_cosine|none, ...}``; see ``optim.build_scheduler``.
        loss_eps: floor on vector norms in the loss.
        mean, std: the normalisation the data used, recorded for export.
        cnn_kwargs, vit_kwargs: extra keyword arguments for ``timm.create_model`` per arm.
        batch_lr_factor: multiplies every learning rate; the apps set it from the lr scaling
            rule for the effective batch.
        remedies: opt-in remedies against collapse (see :class:`~.objective.Remedies`); empty
            or None is exactly the paper.
    """

    method = "cass"
    method_name = "CASS"

    def __init__(
        self,
        cnn: str = "resnet50",
        vit: str = "vit_base_patch16_384",
        img_size: int = 384,
        in_chans: int = 3,
        pretrained: bool = False,
        cnn_weights_file: str | None = None,
        vit_weights_file: str | None = None,
        head: str = "logits",
        head_dim: int = 1000,
        projector_hidden_dim: int = 2048,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        loss_eps: float = DEFAULT_EPS,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cnn_kwargs: dict[str, Any] | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        batch_lr_factor: float = 1.0,
        remedies: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.record_method()
        self.remedies = Remedies.from_dict(remedies)
        self.optimizer_cfg = {**PAPER_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**PAPER_SCHEDULER, **(scheduler or {})}
        self.arm_hyperparameters()  # refuse a non-positive lr before anything is built
        common = dict(head=head, head_dim=head_dim, projector_hidden_dim=projector_hidden_dim)
        self.cnn, self.cnn_head = self.build_arm("cnn", **common)
        self.vit, self.vit_head = self.build_arm("vit", **common)
        if head == "features" and self.cnn.num_features != self.vit.num_features:
            raise ValueError(
                f"head='features' compares pooled features directly, but {cnn} gives "
                f"{self.cnn.num_features} and {vit} gives {self.vit.num_features}; "
                "use head='projector' (or 'logits') to map both arms to one width"
            )
        r = self.remedies
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
            self.ema = EMATargets(self.arms(), r.ema_momentum, r.ema_momentum_end)
        self._ema_updated_at = -1
        self.finite = FiniteLossGuard(
            "CASS", "Lower the learning rate, use 32-true precision or gradient clipping"
        )
        # The pooled (pre-classifier) features of the last forward pass, detached, captured by a
        # hook on each classifier's input: online probes read them without a second pass.
        for arm, (backbone, _) in self.arms().items():
            self.keep_pooled(arm, backbone)

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

    def export_arms(self) -> dict[str, ExportedArm]:
        """Both arms with their heads."""
        specs = self.specs()
        return {arm: ExportedArm(specs[arm], *modules) for arm, modules in self.arms().items()}

    def export_meta(self) -> dict[str, Any]:
        hp = self.hparams
        return {"head": hp.head, "head_dim": hp.head_dim, "img_size": hp.img_size,
                "mean": list(hp.mean), "std": list(hp.std)}  # fmt: skip

    # ---------------------------------------------------------------- training
    def _views(self, batch: Any, stage: str) -> list[Tensor]:
        """The batch's views; in training exactly as many as :meth:`data_views` declares (the
        app composes the data from that declaration; a hand-built loader may not)."""
        views = same_size_views(batch)
        two = self.data_views() == "pair"
        if stage == "train" and len(views) != (2 if two else 1):
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

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        views = self._views(batch, stage)
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
        if stage == "train":  # on the device: read at the logging interval (GuardsFiniteLoss)
            self.finite.record(loss, self.global_step, {"cnn": z_cnn, "vit": z_vit})
        batch_size, on_step, eps = views[0].shape[0], stage == "train", self.hparams.loss_eps
        # Not in Lightning's progress bar while training: it reads those back every batch.
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=not on_step,
                 batch_size=batch_size)  # fmt: skip
        stats = {
            f"{stage}/cosine": cosine_similarity(z_cnn, z_vit, eps),
            f"{stage}/cnn_std": normalized_std(z_cnn, eps),
            f"{stage}/vit_std": normalized_std(z_vit, eps),
        }
        if len(terms) > 2:  # remedies on: the parts of the loss as well
            stats.update({f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"})
        # The pooled features can stay spread while the compared outputs collapse (BatchNorm
        # keeps a CNN's features apart): log both, per arm.
        for arm, pooled in self.pooled.items():
            stats[f"{stage}/{arm}_pooled_std"] = normalized_std(pooled, eps)
        self.log_dict(stats, on_step=on_step, on_epoch=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        self.log_learning_rates()
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    # -------------------------------------------------------------- EMA targets
    def ema_momentum_now(self) -> float:
        """The EMA targets' momentum at this step (see :class:`~.ema.EMATargets`)."""
        total = float(self.trainer.estimated_stepping_batches) if self._trainer else math.inf
        start = float(self.remedies.ema_momentum or 0.0)
        return self.ema.momentum(self.global_step, total) if self.ema is not None else start

    def on_train_start(self) -> None:
        # The targets already match the weights of this step (fresh copies, or a resumed
        # checkpoint saved after its update): the first update comes after the next step.
        self._ema_updated_at = self.global_step
        self.train(True)
        super().on_train_start()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)  # reads the guard when due
        # Once per optimiser step (gradient accumulation runs several batches per step).
        if self.ema is not None and self.global_step != self._ema_updated_at:
            self._ema_updated_at = self.global_step
            self.update_ema(self.ema_momentum_now())

    def update_ema(self, momentum: float) -> None:
        """Move the EMA targets towards the arms (see :meth:`~.ema.EMATargets.follow`)."""
        if self.ema is not None:
            self.ema.follow(self.arms(), momentum)

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
