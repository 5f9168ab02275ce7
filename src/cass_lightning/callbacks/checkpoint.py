"""Crash-safe checkpoints: atomic file writes, and a ``last.ckpt`` kept fresh within an epoch.

A run may be killed at any moment (``kill -9``, a pre-empted node, a full disk). Two rules keep
``cass-pretrain resume=<run>`` possible afterwards:

* A save never damages the previous checkpoint. :class:`AtomicCheckpointIO` writes through
  :func:`cass_lightning.io.atomic_write`: a reader sees the old file or the new one, never half.
* A kill loses little work. :class:`LastCheckpoint` rewrites ``last.ckpt`` every
  ``every_n_train_steps`` optimizer steps as well as at every epoch end, and never with
  non-finite weights, so a run that stops on a non-finite loss keeps its last good state.
  (The modules' non-finite guard, :mod:`cass_lightning.modules.finite`, also refuses every
  checkpoint once a loss was non-finite: the run stops there with ``FloatingPointError``.)
  When Lightning stops a run on SIGTERM (its loops raise ``SIGTERMException`` at the end of a
  batch), it also writes ``last.ckpt`` there, so a pre-empted run resumes where it stopped.

And a load never runs code: :class:`AtomicCheckpointIO` reads every checkpoint Lightning
restores (``fit(ckpt_path=...)``, ``test(ckpt_path="best")``) with ``weights_only=True``
passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot switch it off, and a file that
needs more is refused with the reason (:class:`cass_lightning.io.UnreadableFileError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cass_lightning.io import atomic_write, load_torch_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with writes that a crash cannot leave half done.

    Lightning 2.6's own ``_atomic_save`` writes through an fsspec transaction whose local
    temporary file is made by ``tempfile.mkstemp()`` in the system temp folder, then moved with
    ``shutil.move``: where that folder is another file system (a tmpfs ``/tmp``, runs on a data
    disk) the move is a copy onto the target, which a kill leaves half written, and nothing is
    fsynced. Here the temporary file is in the target's own folder, so the rename is atomic,
    and file and folder are fsynced. Every checkpoint a ``ModelCheckpoint`` writes,
    ``last.ckpt`` included (with ``save_last=True`` it is a full ``trainer.save_checkpoint``,
    not a link), goes through the strategy's ``checkpoint_io``, which is this one.
    Remote paths (``s3://`` ...) keep Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda handle: torch.save(checkpoint, handle))

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Always ``weights_only=True`` (whatever the caller or the environment asks)."""
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        checkpoint = load_torch_file(path, "checkpoint", map_location=location)
        if not isinstance(checkpoint, dict):
            raise ValueError(f"{path} is not a Lightning checkpoint (not a dict)")
        return checkpoint


def atomic_checkpoint_plugin() -> AtomicCheckpointIO:
    """The plugin to pass as ``L.Trainer(plugins=[atomic_checkpoint_plugin()])``."""
    return AtomicCheckpointIO()


def _weights_finite(module: torch.nn.Module) -> bool:
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class LastCheckpoint(ModelCheckpoint):
    """Owns ``last.ckpt``: rewritten every ``every_n_train_steps`` optimizer steps and at every
    training epoch end (after validation), so a killed run loses at most that many steps.

    A separate instance from the "best" ``ModelCheckpoint``: Lightning's step and epoch triggers
    are mutually exclusive within one instance, and with ``save_last=True`` Lightning 2.6 only
    refreshes ``last.ckpt`` when a top-k file was written in the same step. Saves are skipped
    (with a warning) while any weight is non-finite, so ``last.ckpt`` keeps the last good state.

    Args:
        dirpath: the run's ``checkpoints`` folder.
        every_n_train_steps: optimizer steps between mid-epoch saves; ``None`` or 0: epoch ends
            only. Each save writes both arms and the optimizer state, so on large models keep it
            to a save every few minutes.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = 50) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 0:
            raise ValueError(f"every_n_train_steps must be >= 0 or null, got {every_n_train_steps}")
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_train_steps or None,
            # Always the same name: a resumed run whose callback state was not restored (e.g.
            # every_n_train_steps changed) must still refresh last.ckpt, not add last-v1.ckpt.
            enable_version_counter=False,
        )
        #: Whether the state at a SIGTERM stop was saved (set by :meth:`on_exception`).
        self.saved_on_stop = False

    def _saving_disabled(self, trainer: L.Trainer) -> bool:
        from lightning.pytorch.trainer.states import TrainerFn

        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Not on an epoch's last batch: the epoch-end save follows, and resuming from a save
        # taken before the epoch's validation would skip that validation and the epoch's metrics.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every epoch end (Lightning's save_last only follows a top-k save), after validation.
        if not self._saving_disabled(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: epoch ends and step counts are the triggers (validation ends are not)."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """On SIGTERM (Lightning stops at a batch end): save ``last.ckpt`` there, so resuming
        loses nothing. Any other exception keeps the last periodic save."""
        self.saved_on_stop = False
        if isinstance(exception, SIGTERMException) and not self._saving_disabled(trainer):
            if self._last_global_step_saved == trainer.global_step and self.last_model_path:
                self.saved_on_stop = True  # this step's state is saved already
                return
            try:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            except FloatingPointError as err:  # the guard refused: a loss since was non-finite
                rank_zero_warn(f"Not refreshing last.ckpt at the stop: {err}")
                return
            self.saved_on_stop = self._last_global_step_saved == trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # e.g. trainer.max_steps reached mid-epoch after the last step-triggered save
        fresh = self._last_global_step_saved == trainer.global_step
        if not fresh and not self._saving_disabled(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        finite = _weights_finite(trainer.lightning_module)
        # Every rank must take the same branch: saving includes a barrier.
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            rank_zero_warn(
                f"Not refreshing {filepath}: the weights at global step {trainer.global_step} "
                "are not finite. It keeps the last good state."
            )
            return
        super()._save_checkpoint(trainer, filepath)
        # Put the metrics logged so far on disk with the checkpoint (the CSV logger otherwise
        # writes every 100 steps), so a kill right after a save loses no metrics before it.
        for logger in trainer.loggers:
            logger.save()
