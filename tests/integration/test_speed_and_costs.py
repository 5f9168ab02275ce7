"""Speed settings in a run, the data-wait metric, and a pretraining's cost across a resume."""

from __future__ import annotations

import json
import os
import signal

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from test_resume import TINY_RUN as RESUME_TINY_RUN
from torch.utils.data import DataLoader

from app_helpers import compose_app
from cass_lightning import CASSModule
from cass_lightning.apps import pretrain as pretrain_app
from cass_lightning.apps.run.console import reported_errors
from cass_lightning.callbacks import DataWait
from cass_lightning.runtime import SPEED_KEYS, apply_speed_switches
from run_helpers import images, make_trainer

TINY_RUN = [
    *RESUME_TINY_RUN,
    "trainer.max_epochs=2",
    "callbacks.last_checkpoint.every_n_train_steps=100",
]
STEPS = 2 * 6 * 8 // 8  # 2 epochs of 6 classes x 8 images at batch 8


class TermAt(L.Callback):
    """Sends SIGTERM to this process after optimizer step ``step``, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.mark.slow
def test_a_stopped_and_resumed_run_costs_what_an_uninterrupted_one_does(tmp_path):
    whole = pretrain_app.pretrain(compose_app(tmp_path, TINY_RUN, output_dir=tmp_path / "whole"))
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["speed"] == {key: False for key in SPEED_KEYS}  # CPU, no loader workers
    info = json.loads((tmp_path / "whole" / "run_info.json").read_text())
    assert info["starts"][0]["speed"] == summary["speed"]
    assert 0 <= summary["data_wait_share"] < 1
    assert summary["cost_comparable"] is True and len(summary["attempts"]) == 1
    assert (whole["steps"], whole["images"]) == (STEPS, STEPS * 8)

    run = tmp_path / "run"
    stopped = compose_app(
        tmp_path,
        [
            *TINY_RUN,
            "+callbacks.term._target_=test_speed_and_costs.TermAt",
            "+callbacks.term.step=3",
        ],
    )
    with pytest.raises(SystemExit) as exit_, reported_errors():
        pretrain_app.pretrain(stopped)
    assert exit_.value.code == 143
    first = json.loads((run / "run_info.json").read_text())["starts"][0]
    assert (first["outcome"], first["steps"], first["images"]) == ("stopped", 3, 24)

    resumed = compose_app(tmp_path, [*TINY_RUN, f"resume={run}"])
    result = pretrain_app.pretrain(resumed)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == STEPS and summary["cost_comparable"] is True
    assert [a["outcome"] for a in summary["attempts"]] == ["stopped", "finished"]
    assert (summary["steps"], summary["images"]) == (whole["steps"], whole["images"])
    assert summary["fit_seconds"] == pytest.approx(sum(a["seconds"] for a in summary["attempts"]))
    assert result["fit_seconds"] > result["this_start_fit_seconds"]
    # Seconds loosely (a shared CPU, a few steps): the same order as the uninterrupted run's.
    assert 1 / 3 < summary["train_seconds"] / whole["train_seconds"] < 3


def _losses(model: CASSModule, steps: int = 3) -> list[float]:
    class Grab(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, idx) -> None:
            self.losses.append(float(outputs["loss"]))

    grab = Grab()
    torch.manual_seed(1)
    data = DataLoader(images(4 * steps), batch_size=4)
    make_trainer(max_steps=steps, callbacks=[grab]).fit(model, data)
    return grab.losses


def test_channels_last_trains_to_the_same_losses(tiny_kwargs):
    plain = CASSModule(**tiny_kwargs)
    nhwc = CASSModule(**tiny_kwargs)
    nhwc.load_state_dict(plain.state_dict())
    apply_speed_switches(nhwc, channels_last=True, compile=False)
    # Convolutions summed in another order; Adam's first steps magnify that a little.
    torch.testing.assert_close(_losses(nhwc), _losses(plain), atol=1e-3, rtol=5e-3)


def test_data_wait_counts_steps_images_and_logs_its_share(tiny_kwargs):
    waits = DataWait()
    trainer = make_trainer(max_steps=4, callbacks=[waits], log_every_n_steps=2)
    trainer.fit(CASSModule(**tiny_kwargs), DataLoader(images(8), batch_size=4))
    assert (waits.steps, waits.images, waits.batches) == (4, 16, 4)
    assert waits.share is not None and 0 <= waits.share < 1
    assert "perf/data_wait_share" in trainer.callback_metrics
    assert "perf/data_wait_s" in trainer.callback_metrics


def test_a_bad_speed_value_is_refused_before_the_run_claims_its_folder(tmp_path):
    cfg = compose_app(tmp_path, [*TINY_RUN, "speed.tf32=fast"])
    with pytest.raises(ValueError, match=r"speed\.tf32 must be true, false or auto; got .fast."):
        pretrain_app.pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_dino_and_cass_references_get_the_same_speed_settings(tmp_path):
    """The CASS/DINO time ratio is fair only with equal settings; both keep exact fp32."""
    cass = compose_app(tmp_path, ["experiment=paper_reference"])
    dino = compose_app(tmp_path, ["experiment=dino_reference"])
    assert cass.speed == dino.speed and cass.speed.tf32 is False
    assert compose_app(tmp_path, []).speed.tf32 == "auto"
