"""Online evaluation during pretraining: a linear probe per arm every step, kNN every N epochs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from cass_lightning.batches import batch_labels
from cass_lightning.evaluation import LinearProbe, extract_features, knn_accuracy


class OnlineEvaluation(L.Callback):
    """Is the representation improving? Measured during pretraining, without a separate job.

    - Online linear probe per arm: a linear layer on the detached pooled features of each
      training batch, trained with its own Adam on the labelled rows only (the datamodule marks
      the others -1), evaluated on the validation batches (``probe/<arm>_val_acc``). Its
      training loss and accuracy are summed on the device and read back once per epoch
      (``probe/<arm>_train_loss``, ``_train_acc``, over the epoch's labelled rows).
    - Weighted kNN per arm every ``every_n_epochs`` (and at the last epoch): the labelled
      training images (eval transform) are the bank, the validation split the queries, features
      in fp32 (``knn/<arm>_val_acc``).

    Reads the model through the pretraining protocol (``modules.base.PretrainingModule``):
    the arms it trains (``trained_arms``; ``arms`` narrows them), each arm's backbone and the
    pooled features of its last forward pass, so it works for every method. Needs a datamodule
    with single-label classes and a validation split (a ``MedicalDataModule``); otherwise it
    says once why it is off and does nothing. Probes are diagnostics: not checkpointed.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        k: int = 20,
        temperature: float = 0.07,
        probe_lr: float = 1e-3,
        arms: Sequence[str] = ("cnn", "vit"),
    ) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.k, self.temperature, self.probe_lr = k, temperature, probe_lr
        self.arms = tuple(arms)
        self.probes: dict[str, Any] = {}
        self._correct: dict[str, int] = {}
        self._seen = 0
        self._train: dict[str, Tensor] = {}  # per arm: summed loss, correct, labelled rows
        self.enabled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        why = self._why_off(trainer, pl_module)
        if why is not None:
            rank_zero_only(print)(f"online evaluation off: {why}")
            return
        dm = trainer.datamodule
        self.enabled = True
        for arm in self.arms_of(pl_module):
            features = int(pl_module.arm_backbone(arm).num_features)
            probe = LinearProbe(features, dm.num_classes, lr=self.probe_lr)
            self.probes[arm] = probe.to(pl_module.device)

    def arms_of(self, pl_module: L.LightningModule) -> tuple[str, ...]:
        """The arms both asked for and trained by the model."""
        return tuple(a for a in self.arms if a in pl_module.trained_arms())

    def _why_off(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        return self.why_off(trainer.datamodule, pl_module)

    def why_off(self, dm: Any, pl_module: L.LightningModule) -> str | None:
        """Why this callback cannot run with ``dm`` and ``pl_module`` (``None``: it can)."""
        if dm is None or not hasattr(dm, "labelled_eval_dataloader"):
            return "it needs a MedicalDataModule (labelled images and a validation split)"
        if not callable(getattr(pl_module, "trained_arms", None)):
            return (f"{type(pl_module).__name__} is not a PretrainingModule (no trained_arms, "
                    "arm_backbone, pooled_features)")  # fmt: skip
        if not self.arms_of(pl_module):
            return f"the model trains {pl_module.trained_arms()}, none of arms={self.arms}"
        dm.setup("fit")
        if dm.multi_label:
            return "the labels are multi-label; the probe and kNN need single-label classes"
        if len(dm.split_indices("val")) == 0:
            return "the data has no validation split"
        return None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if not self.enabled:
            return
        labels = batch_labels(batch).to(pl_module.device)
        for arm, probe in self.probes.items():
            probe.to(pl_module.device)
            # Summed on the device: read back once, at the epoch's end.
            features = pl_module.pooled_features(arm)
            if features is None:
                continue
            totals = torch.stack(probe.step_on_device(features, labels)).float()
            previous = self._train.get(arm)
            self._train[arm] = totals if previous is None else previous + totals

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The probes' training loss and accuracy over the epoch's labelled rows."""
        if not self._train:
            return
        arms = list(self._train)
        values = torch.stack([self._train[arm] for arm in arms]).tolist()
        metrics = {}
        for arm, (loss, correct, count) in zip(arms, values, strict=True):
            if count > 0:
                metrics[f"probe/{arm}_train_loss"] = loss / count
                metrics[f"probe/{arm}_train_acc"] = correct / count
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._correct = dict.fromkeys(self.probes, 0)
        self._seen = 0

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        labels = batch_labels(batch).to(pl_module.device)
        for arm, probe in self.probes.items():
            predicted = probe.predict(pl_module.pooled_features(arm))
            self._correct[arm] += int((predicted == labels).sum())
        self._seen += int(labels.shape[0])

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not self._seen:
            return
        metrics = {f"probe/{arm}_val_acc": self._correct[arm] / self._seen for arm in self.probes}
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 or epoch >= (trainer.max_epochs or epoch):
            metrics.update(self.knn(trainer, pl_module))
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def knn(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        dm = trainer.datamodule
        results = {}
        for arm in self.probes:
            backbone = pl_module.arm_backbone(arm)
            bank, bank_labels = extract_features(
                backbone, dm.labelled_eval_dataloader(), pl_module.device
            )
            queries, labels = extract_features(backbone, dm.val_dataloader(), pl_module.device)
            results[f"knn/{arm}_val_acc"] = knn_accuracy(
                bank, bank_labels, queries, labels, dm.num_classes, self.k, self.temperature
            )
        return results
