"""Small pieces several test files share: a quiet CPU Trainer, tiny random images, and loading
a ``bench/`` script as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import lightning as L
import torch

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def make_trainer(**kwargs) -> L.Trainer:
    """A CPU Trainer with nothing written and nothing printed; ``kwargs`` override."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def images(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` imported under a private module name."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
