"""Lightning callbacks, one concern each; the names here are what ``conf/callbacks/`` targets.

- :mod:`.export`: the trained arms as plain timm weights when a fit completes.
- :mod:`.checkpoint`: atomic checkpoint writes and a ``last.ckpt`` kept fresh within epochs.
- :mod:`.monitors`: training throughput and every method's collapse alarm.
- :mod:`.datawait`: how long each training step waits for its batch (the loader's share).
- :mod:`.online_eval`: a linear probe and kNN per arm during pretraining.
- :mod:`.media`: grids of augmented samples, ViT attention and CNN Grad-CAM maps.
"""

from cass_lightning.callbacks.checkpoint import (
    AtomicCheckpointIO,
    LastCheckpoint,
    atomic_checkpoint_plugin,
)
from cass_lightning.callbacks.datawait import DataWait
from cass_lightning.callbacks.export import ExportBackbones
from cass_lightning.callbacks.media import LogAttentionMaps, LogAugmentedSamples, image_grid
from cass_lightning.callbacks.monitors import CollapseMonitor, ImagesPerSecond, LoopTimer
from cass_lightning.callbacks.online_eval import OnlineEvaluation

__all__ = [
    "AtomicCheckpointIO",
    "CollapseMonitor",
    "DataWait",
    "ExportBackbones",
    "ImagesPerSecond",
    "LastCheckpoint",
    "LogAttentionMaps",
    "LogAugmentedSamples",
    "LoopTimer",
    "OnlineEvaluation",
    "atomic_checkpoint_plugin",
    "image_grid",
]
