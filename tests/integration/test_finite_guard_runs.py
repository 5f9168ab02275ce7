"""The non-finite guard in real runs: a NaN at a known step stops CASS, DINO and fine-tuning
naming that step, ``last.ckpt`` keeps finite weights, the losses are those of a run without the
guard, and fine-tuning from non-finite weights or with a diverging lr writes no results."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from safetensors.torch import save_file
from test_finetune import TINY_APP, compose_cfg

from app_helpers import run_app
from cass_lightning.apps.finetune import RESULTS_FILE, finetune
from cass_lightning.callbacks import LastCheckpoint
from cass_lightning.encoders import create_timm_model
from cass_lightning.modules.finite import FiniteLossGuard
from run_helpers import make_trainer
from tiny_training import tiny_cass, tiny_classifier, tiny_dino

STEPS, BAD_STEP, EVERY = 12, 7, 5


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return [t for item in batch for t in _tensors(item)]
    return []


class NaNInputAt(L.Callback):
    """Fills the images of the batch of global step ``step`` with NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, idx: int):
        if trainer.global_step == self.step:
            for t in _tensors(batch):
                if t.is_floating_point():
                    t.fill_(float("nan"))


# the three modules on tiny encoders, each with a loader of STEPS batches
_cass, _dino, _classifier = (
    partial(build, STEPS) for build in (tiny_cass, tiny_dino, tiny_classifier)
)


@pytest.mark.parametrize(
    ("build", "names"),
    [(_cass, "CASS loss (nan) at global step 7 (noticed at step 10); non-finite output from cnn "
              "and vit; last finite loss"),
     (_dino, "DINO loss (nan) at global step 7 (noticed at step 10); non-finite output from cnn; "
             "last finite loss"),
     (_classifier, "fine-tuning loss (nan) at global step 7 (noticed at step 10); last finite")],
    ids=["cass", "dino", "classifier"],
)  # fmt: skip
def test_a_nan_at_a_known_step_stops_the_run_naming_it(tmp_path, build, names):
    model, loader = build()
    last = LastCheckpoint(tmp_path, every_n_train_steps=4)
    trainer = make_trainer(max_steps=STEPS, log_every_n_steps=EVERY, enable_checkpointing=True,
                           callbacks=[NaNInputAt(BAD_STEP), last])  # fmt: skip
    with pytest.raises(FloatingPointError) as info:
        trainer.fit(model, loader)
    message = str(info.value)
    # At step 8 the weights are NaN: last.ckpt is not refreshed; step 10 logs and notices.
    assert names in message and "at step 6." in message, message
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4
    assert all(
        torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point()
    )


def test_without_a_checkpoint_the_logging_interval_notices_it():
    model, loader = _dino()
    trainer = make_trainer(max_steps=STEPS, log_every_n_steps=EVERY,
                           callbacks=[NaNInputAt(BAD_STEP)])  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"at global step 7 \(noticed at step 10\)"):
        trainer.fit(model, loader)
    assert trainer.global_step == 10


class KeepLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, *args: Any):
        self.losses.append(outputs["loss"].detach().clone())


def test_the_guard_does_not_change_the_losses(monkeypatch):
    model, loader = _cass()
    plain = copy.deepcopy(model)
    runs = []
    for module in (model, plain):
        if module is plain:  # the same run with the guard's recording taken out
            monkeypatch.setattr(FiniteLossGuard, "record", lambda *args, **kwargs: None)
        keep = KeepLosses()
        torch.manual_seed(1)
        make_trainer(max_steps=4, callbacks=[keep]).fit(module, loader)
        runs.append(torch.stack(keep.losses))
    assert len(runs[0]) == 4 and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])


def _nan_weights(tmp_path: Path) -> Path:
    state = create_timm_model("resnet10t").state_dict()
    file = tmp_path / "nan.safetensors"
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v.contiguous()
               for k, v in state.items()}, str(file))  # fmt: skip
    return file


FROM_FILE = ["weights=imagenet", "model.timm_name=resnet10t", "model.img_size=32"]


def test_finetuning_refuses_non_finite_weights_and_stops_on_a_diverging_lr(tmp_path):
    file = _nan_weights(tmp_path)
    cfg = compose_cfg(tmp_path, [*TINY_APP, *FROM_FILE, f"model.weights_file={file}"], run="nan")
    with pytest.raises(ValueError, match=r"nan\.safetensors hold non-finite values"):
        finetune(cfg)
    assert not (tmp_path / "nan" / RESULTS_FILE).exists()
    overrides = [*TINY_APP, "weights=random", "model.timm_name=resnet10t", "model.img_size=32",
                 "model.optimizer.lr=1e9"]  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"non-finite fine-tuning loss.*optimizer\.lr"):
        finetune(compose_cfg(tmp_path, overrides, run="lr"))
    assert not (tmp_path / "lr" / RESULTS_FILE).exists()


@pytest.mark.slow
def test_the_finetune_app_exits_1_with_one_named_line_on_non_finite_weights(tmp_path):
    file = _nan_weights(tmp_path)
    args = [*TINY_APP, *FROM_FILE, f"model.weights_file={file}", "trainer.max_epochs=1"]
    proc = run_app(tmp_path, ["cass_lightning.apps.finetune", *args])
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"{file} hold non-finite values" in proc.stderr + proc.stdout
    assert not list((tmp_path / "runs").rglob(RESULTS_FILE))
