"""CASSModule: a CNN and a ViT trained together on one augmented view, no Hydra needed.

Usable on its own::

    from cass_lightning import CASSModule
    model = CASSModule(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64, pretrained=False)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: tensor, (x, y) or {"image": x}

Constructor arguments are plain values so ``save_hyperparameters`` and ``load_from_checkpoint``
work without any config system.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from cass_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cass_lightning.encoders import (
    EncoderSpec,
    build_encoder,
    encoder_spec,
    freeze_stages,
    keep_frozen_in_eval,
)
from cass_lightning.losses import DEFAULT_EPS, cosine_similarity, normalized_std
from cass_lightning.objective import CASSObjective
from cass_lightning.optim import arm_param_groups, group_learning_rates, lightning_optimizers

#: The paper's optimiser: Adam, lr 1e-3, no weight decay, on both arms.
PAPER_OPTIMIZER: dict[str, Any] = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}
#: The paper's schedule: CosineAnnealingLR(T_max=16, eta_min=1e-6) stepped every iteration.
PAPER_SCHEDULER: dict[str, Any] = {"name": "cyclic_cosine", "t_max": 16, "eta_min": 1e-6}


def batch_images(batch: Any) -> Tensor:
    """The image tensor of a batch given as a tensor, an ``(images, ...)`` tuple/list or a dict."""
    if isinstance(batch, Tensor):
        images = batch
    elif isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"a dict batch needs the key 'image'; got keys {sorted(batch)}")
        images = batch["image"]
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 0:
        images = batch[0]
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], Tensor):
            images = images[0]  # a list of views: the first one
    else:
        raise TypeError(
            "a batch must be an image tensor, an (images, labels) tuple/list or a dict with "
            f"'image'; got {type(batch).__name__}"
        )
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images as a (batch, channels, H, W) tensor, got {shape}")
    return images


def batch_views(batch: Any) -> list[Tensor]:
    """The views of a batch: ``[images]`` for a single view (any :func:`batch_images` format), or
    the list of view tensors of a ``([view_1, view_2], labels)`` batch (``data.train_views=pair``)
    or of a dict with ``views``."""
    views: Any = None
    if isinstance(batch, Mapping) and "views" in batch:
        views = batch["views"]
    elif (
        isinstance(batch, Sequence)
        and not isinstance(batch, str)
        and len(batch) > 0
        and isinstance(batch[0], (list, tuple))
        and len(batch[0]) > 0
        and all(isinstance(v, Tensor) for v in batch[0])
    ):
        views = batch[0]
    if views is None:
        return [batch_images(batch)]
    views = list(views)
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) != 1 or views[0].ndim != 4:
        raise ValueError(
            f"the views of a batch must be (batch, channels, H, W) tensors of one shape, got "
            f"{sorted(shapes)}"
        )
    return views


def describe_last_finite(last: dict[str, float]) -> str:
    """The last good loss of a run, for the message of a non-finite stop."""
    if not last:
        return "no finite loss yet in this run"
    return f"last finite loss {last['loss']:.6g} at step {last['step']}"


class KeepPooled:
    """Forward hook on a classifier: stores its (detached) input, the pooled features.

    A class rather than a closure so the module still pickles (``ddp_spawn``, workers)."""

    def __init__(self, store: dict[str, Tensor], arm: str) -> None:
        self.store, self.arm = store, arm

    def __call__(self, module: Any, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self.store[self.arm] = inputs[0].detach()


class CASSModule(L.LightningModule):
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
        optimizer: ``{name: adam|adamw|sgd, lr, weight_decay, betas, eps, momentum}``.
        scheduler: ``{name: cyclic_cosine|warmup_cosine|none, ...}``; see ``optim.build_scheduler``.
        cnn_lr, vit_lr, cnn_weight_decay, vit_weight_decay: per-arm overrides of the optimiser's.
        loss_eps: floor on vector norms in the loss.
        zero_grad_every_step: ``False`` reproduces the reference notebook's defect (gradients
            accumulate over the whole run). An ablation switch only; never the default.
        mean, std: the normalisation the data used, recorded for export.
        cnn_kwargs, vit_kwargs: extra keyword arguments for ``timm.create_model`` per arm.
        lr_scale: multiplies every learning rate (the apps set it from the lr scaling rule).
        channels_last: NHWC memory layout for the CNN (faster convolutions on recent GPUs).
        compile: ``torch.compile`` both arms in place (state-dict keys unchanged; the first
            steps pay the compilation, ~45 s on a 2-core CPU).

    Remedies against collapse, all off by default (the default is exactly the paper's loss) and
    composable; see ``objective.py`` and the README's "CASS from pretrained weights":
        layer_decay: layer-wise lr decay per arm, e.g. 0.75 (the stem moves least).
        cnn_freeze_stages, vit_freeze_stages: freeze the first N stages of an arm (ResNet: stem,
            layer1..layer4; ViT: embeddings, then blocks), BatchNorm statistics included.
        ema_momentum: keep a momentum copy of each arm as the target of the other arm
            (e.g. 0.99, raised along a cosine to ``ema_momentum_end`` over the run).
        variance_weight, covariance_weight, variance_target: VICReg terms on each arm's
            L2-normalised outputs scaled by sqrt(dim) (e.g. variance 1.0; covariance off: alone it
            is lowered by shrinking the spread).
        predictor: ``none`` | ``alternate`` | ``symmetric``: predictor MLP + stop-gradient.
        predictor_hidden_dim: the predictor's bottleneck width.
        two_views: each arm sees its own augmentation, losses crossed and symmetrised (the
            batches must carry two views: ``data.train_views=pair``).
    """

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
        cnn_lr: float | None = None,
        vit_lr: float | None = None,
        cnn_weight_decay: float | None = None,
        vit_weight_decay: float | None = None,
        loss_eps: float = DEFAULT_EPS,
        zero_grad_every_step: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cnn_kwargs: dict[str, Any] | None = None,
        vit_kwargs: dict[str, Any] | None = None,
        lr_scale: float = 1.0,
        channels_last: bool = False,
        compile: bool = False,
        layer_decay: float | None = None,
        cnn_freeze_stages: int = 0,
        vit_freeze_stages: int = 0,
        ema_momentum: float | None = None,
        ema_momentum_end: float = 1.0,
        variance_weight: float = 0.0,
        covariance_weight: float = 0.0,
        variance_target: float = 1.0,
        predictor: str = "none",
        predictor_hidden_dim: int = 512,
        two_views: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_cfg = {**PAPER_OPTIMIZER, **(optimizer or {})}
        self.scheduler_cfg = {**PAPER_SCHEDULER, **(scheduler or {})}
        common = dict(head=head, head_dim=head_dim, pretrained=pretrained, in_chans=in_chans)
        self.cnn, self.cnn_head = build_encoder(
            cnn,
            weights_file=cnn_weights_file,
            projector_hidden_dim=projector_hidden_dim,
            **common,
            **(cnn_kwargs or {}),
        )
        self.vit, self.vit_head = build_encoder(
            vit,
            weights_file=vit_weights_file,
            img_size=img_size,
            projector_hidden_dim=projector_hidden_dim,
            **common,
            **(vit_kwargs or {}),
        )
        if head == "features" and self.cnn.num_features != self.vit.num_features:
            raise ValueError(
                f"head='features' compares pooled features directly, but {cnn} gives "
                f"{self.cnn.num_features} and {vit} gives {self.vit.num_features}; "
                "use head='projector' (or 'logits') to map both arms to one width"
            )
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        self.frozen_modules = {
            "cnn": freeze_stages(self.cnn, cnn_freeze_stages),
            "vit": freeze_stages(self.vit, vit_freeze_stages),
        }
        # Lightning keeps the train/eval modes it finds when a fit starts: set them now.
        self.train(self.training)
        dim = self.cnn.num_features if head == "features" else head_dim
        self.objective = CASSObjective(
            dim,
            predictor=predictor,
            predictor_hidden_dim=predictor_hidden_dim,
            variance_weight=variance_weight,
            covariance_weight=covariance_weight,
            variance_target=variance_target,
            eps=loss_eps,
        )
        # Momentum copies of each arm (backbone + head), targets only: no gradients, no optimiser.
        self.ema: torch.nn.ModuleDict | None = None
        if ema_momentum is not None:
            if not 0.0 <= ema_momentum <= ema_momentum_end <= 1.0:
                raise ValueError(
                    "need 0 <= ema_momentum <= ema_momentum_end <= 1, got "
                    f"{ema_momentum} and {ema_momentum_end}"
                )
            self.ema = torch.nn.ModuleDict(
                {
                    "cnn": torch.nn.Sequential(
                        copy.deepcopy(self.cnn), copy.deepcopy(self.cnn_head)
                    ),
                    "vit": torch.nn.Sequential(
                        copy.deepcopy(self.vit), copy.deepcopy(self.vit_head)
                    ),
                }
            )
            self.ema.requires_grad_(False)
        self._ema_updated_at = -1
        if channels_last:
            self.cnn.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema["cnn"].to(memory_format=torch.channels_last)
        if compile:
            for arm in (self.cnn, self.vit):
                arm.compile()
        self._last_finite: dict[str, float] = {}
        # The pooled (pre-classifier) features of the last forward pass, detached, captured by a
        # hook on each classifier's input: online probes read them without a second pass.
        self.pooled: dict[str, Tensor] = {}
        for arm, backbone in (("cnn", self.cnn), ("vit", self.vit)):
            backbone.get_classifier().register_forward_hook(KeepPooled(self.pooled, arm))

    # ----------------------------------------------------------------- forward
    def embed_cnn(self, images: Tensor) -> Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.cnn_head(self.cnn(images))

    def embed_vit(self, images: Tensor) -> Tensor:
        return self.vit_head(self.vit(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Both arms' vectors for the same images: ``(z_cnn, z_vit)``."""
        return self.embed_cnn(images), self.embed_vit(images)

    def specs(self) -> dict[str, EncoderSpec]:
        """How to rebuild each arm's backbone with plain timm."""
        hp = self.hparams
        return {
            "cnn": encoder_spec(hp.cnn, self.cnn, None, hp.in_chans),
            "vit": encoder_spec(hp.vit, self.vit, hp.img_size, hp.in_chans),
        }

    # ---------------------------------------------------------------- training
    def _views(self, batch: Any, stage: str) -> list[Tensor]:
        views = batch_views(batch)
        if stage == "train" and len(views) != (2 if self.hparams.two_views else 1):
            if self.hparams.two_views:
                raise ValueError(
                    f"two_views=True needs batches of two views, got {len(views)}; set "
                    "data.train_views=pair (the remedy config does) or give ([v1, v2], labels)"
                )
            raise ValueError(
                f"got a batch of {len(views)} views; CASS compares one view unless "
                "two_views=True (then exactly two: data.train_views=pair)"
            )
        return views

    @torch.no_grad()
    def _ema_outputs(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]] | None:
        if self.ema is None:
            return None
        cnn_in = views
        if self.hparams.channels_last:
            cnn_in = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return [self.ema["cnn"](v) for v in cnn_in], [self.ema["vit"](v) for v in views]

    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        views = self._views(batch, stage)
        outputs = [self(v) for v in views]
        cnn = [o[0] for o in outputs]
        vit = [o[1] for o in outputs]
        targets = self._ema_outputs(views)
        terms = self.objective(
            cnn,
            vit,
            cnn_target=targets[0] if targets else None,
            vit_target=targets[1] if targets else None,
            step=self.global_step,
            training=stage == "train",
        )
        loss = terms["loss"]
        z_cnn, z_vit = cnn[0], vit[0]
        if stage == "train":
            self._check_finite(loss, z_cnn, z_vit)
        batch_size = views[0].shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=batch_size)  # fmt: skip
        stats = {
            f"{stage}/cosine": cosine_similarity(z_cnn, z_vit, self.hparams.loss_eps),
            f"{stage}/cnn_std": normalized_std(z_cnn, self.hparams.loss_eps),
            f"{stage}/vit_std": normalized_std(z_vit, self.hparams.loss_eps),
        }
        if len(terms) > 2:  # remedies on: the parts of the loss as well
            stats.update({f"{stage}/{k}": v.detach() for k, v in terms.items() if k != "loss"})
        # The pooled features can stay spread while the compared outputs collapse (BatchNorm
        # keeps a CNN's features apart): log both, per arm.
        for arm, pooled in self.pooled.items():
            stats[f"{stage}/{arm}_pooled_std"] = normalized_std(pooled, self.hparams.loss_eps)
        self.log_dict(stats, on_step=on_step, on_epoch=True, batch_size=batch_size)
        return loss

    def ema_momentum_now(self) -> float:
        """The EMA momentum at this step: cosine from ``ema_momentum`` to ``ema_momentum_end``
        over the run (constant when the run length is unknown)."""
        start, end = float(self.hparams.ema_momentum), float(self.hparams.ema_momentum_end)
        total = float(self.trainer.estimated_stepping_batches) if self._trainer else math.inf
        if not math.isfinite(total) or total <= 1:
            return start
        progress = min(1.0, self.global_step / total)
        return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """``target = momentum * target + (1 - momentum) * online`` for every parameter; buffers
        (BatchNorm statistics) are copied."""
        if self.ema is None:
            return
        for arm, online in (("cnn", (self.cnn, self.cnn_head)), ("vit", (self.vit, self.vit_head))):
            # self.ema[arm] is Sequential(backbone copy, head copy): the same order as ``online``.
            for target, source in zip(self.ema[arm], online, strict=True):
                for t, o in zip(target.parameters(), source.parameters(), strict=True):
                    t.lerp_(o.detach().to(t.dtype), 1.0 - momentum)
                for t, o in zip(target.buffers(), source.buffers(), strict=True):
                    t.copy_(o)

    def on_train_start(self) -> None:
        # The targets already match the weights of this step (fresh copies, or a resumed
        # checkpoint saved after its update): the first update comes after the next step.
        self._ema_updated_at = self.global_step
        for arm in ("cnn", "vit"):
            keep_frozen_in_eval(getattr(self, arm), self.frozen_modules[arm])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Once per optimiser step (gradient accumulation runs several batches per step).
        if self.ema is not None and self.global_step != self._ema_updated_at:
            self._ema_updated_at = self.global_step
            self.update_ema(self.ema_momentum_now())

    def train(self, mode: bool = True) -> CASSModule:
        super().train(mode)
        frozen = getattr(self, "frozen_modules", {})
        keep_frozen_in_eval(self.cnn, frozen.get("cnn", []))
        keep_frozen_in_eval(self.vit, frozen.get("vit", []))
        return self

    def _check_finite(self, loss: Tensor, z_cnn: Tensor, z_vit: Tensor) -> None:
        """Stop on a non-finite loss, naming the step, the arm(s) at fault and the last good
        values (DINO's reference stops the same way). No checkpoint is written after this, so
        ``last.ckpt`` keeps the last good state."""
        if torch.isfinite(loss):
            self._last_finite = {"step": self.global_step, "loss": float(loss)}
            return
        bad = [
            arm for arm, z in (("cnn", z_cnn), ("vit", z_vit)) if not bool(torch.isfinite(z).all())
        ]
        arms = " and ".join(bad) if bad else "neither arm (the loss itself)"
        previous = describe_last_finite(self._last_finite)
        raise FloatingPointError(
            f"non-finite CASS loss ({float(loss)}) at global step {self.global_step}; "
            f"non-finite output from {arms}; {previous}. Lower the learning rate, use "
            "32-true precision or gradient clipping; last.ckpt holds the last good state."
        )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        lrs = group_learning_rates(self.trainer.optimizers[0])
        self.log_dict(lrs, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        if self.hparams.zero_grad_every_step:
            optimizer.zero_grad(set_to_none=True)

    # --------------------------------------------------------------- optimiser
    def arm_hyperparameters(self) -> dict[str, dict[str, float]]:
        """Effective lr and weight decay of each arm (per-arm overrides over the optimiser's)."""
        hp, opt = self.hparams, self.optimizer_cfg
        base_wd = float(opt.get("weight_decay", 0.0))

        def pick(value: float | None, default: float) -> float:
            return float(default if value is None else value)

        return {
            arm: {
                "lr": pick(hp[f"{arm}_lr"], opt["lr"]) * hp.lr_scale,
                "weight_decay": pick(hp[f"{arm}_weight_decay"], base_wd),
            }
            for arm in ("cnn", "vit")
        }

    def param_groups(self) -> list[dict[str, Any]]:
        arms = self.arm_hyperparameters()
        decay = self.hparams.layer_decay
        predictors = self.objective.predictors
        groups = []
        for arm, backbone, head in (
            ("cnn", self.cnn, self.cnn_head),
            ("vit", self.vit, self.vit_head),
        ):
            modules = [backbone, head] + ([predictors[arm]] if predictors is not None else [])
            groups += arm_param_groups(arm, modules, layer_decay=decay, **arms[arm])
        return groups

    def configure_optimizers(self) -> Any:
        return lightning_optimizers(
            self.param_groups(), self.optimizer_cfg, self.scheduler_cfg, self.trainer
        )
