"""CASSModule: a CNN and a ViT trained together on one augmented view, no Hydra needed.

Usable on its own::

    from cass_lightning import CASSModule
    model = CASSModule(cnn="resnet18", vit="vit_tiny_patch16_224", img_size=64, pretrained=False)
    lightning.Trainer(max_epochs=1).fit(model, loader)  # batches: tensor, (x, y) or {"image": x}

Constructor arguments are plain values so ``save_hyperparameters`` and ``load_from_checkpoint``
work without any config system.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from cass_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cass_lightning.encoders import EncoderSpec, build_encoder, encoder_spec
from cass_lightning.losses import DEFAULT_EPS, cass_loss, cosine_similarity, normalized_std
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
    else:
        raise TypeError(
            "a batch must be an image tensor, an (images, labels) tuple/list or a dict with "
            f"'image'; got {type(batch).__name__}"
        )
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images as a (batch, channels, H, W) tensor, got {shape}")
    return images


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
        if channels_last:
            self.cnn.to(memory_format=torch.channels_last)
        if compile:
            for arm in (self.cnn, self.vit):
                arm.compile()
        self._last_finite: dict[str, float] = {}
        # The pooled (pre-classifier) features of the last forward pass, detached, captured by a
        # hook on each classifier's input: online probes read them without a second pass.
        self.pooled: dict[str, Tensor] = {}
        for arm, backbone in (("cnn", self.cnn), ("vit", self.vit)):
            backbone.get_classifier().register_forward_hook(KeepPooled(self.pooled, arm))
        if head == "features" and self.cnn.num_features != self.vit.num_features:
            raise ValueError(
                f"head='features' compares pooled features directly, but {cnn} gives "
                f"{self.cnn.num_features} and {vit} gives {self.vit.num_features}; "
                "use head='projector' (or 'logits') to map both arms to one width"
            )

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
    def _shared_step(self, batch: Any, stage: str) -> Tensor:
        images = batch_images(batch)
        z_cnn, z_vit = self(images)
        loss = cass_loss(z_cnn, z_vit, eps=self.hparams.loss_eps)
        if stage == "train":
            self._check_finite(loss, z_cnn, z_vit)
        batch_size = images.shape[0]
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=batch_size)  # fmt: skip
        stats = {
            f"{stage}/cosine": cosine_similarity(z_cnn, z_vit, self.hparams.loss_eps),
            f"{stage}/cnn_std": normalized_std(z_cnn, self.hparams.loss_eps),
            f"{stage}/vit_std": normalized_std(z_vit, self.hparams.loss_eps),
        }
        # The pooled features can stay spread while the compared outputs collapse (BatchNorm
        # keeps a CNN's features apart): log both, per arm.
        for arm, pooled in self.pooled.items():
            stats[f"{stage}/{arm}_pooled_std"] = normalized_std(pooled, self.hparams.loss_eps)
        self.log_dict(stats, on_step=on_step, on_epoch=True, batch_size=batch_size)
        return loss

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
        return arm_param_groups("cnn", [self.cnn, self.cnn_head], **arms["cnn"]) + arm_param_groups(
            "vit", [self.vit, self.vit_head], **arms["vit"]
        )

    def configure_optimizers(self) -> Any:
        return lightning_optimizers(
            self.param_groups(), self.optimizer_cfg, self.scheduler_cfg, self.trainer
        )
