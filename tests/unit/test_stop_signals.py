"""A signal during a checkpoint save waits for the save: the run still stops with 128 + signal
(never an unrelated error from inside ``torch.save``), and the file is whole."""

from __future__ import annotations

import signal
import sys
import time
from types import SimpleNamespace

import pytest

from cass_lightning.apps.run.console import RunStopped, StopSignals
from cass_lightning.io import atomic_write


def _listening_trainer() -> SimpleNamespace:
    """What StopSignals reads of a Trainer inside ``fit``: Lightning's signal connector."""
    return SimpleNamespace(
        _signal_connector=SimpleNamespace(_original_handlers={15: None}, received_sigterm=False)
    )


def test_a_second_ctrl_c_during_the_save_waits_for_it(tmp_path):
    stop = StopSignals()
    stop.trainer = _listening_trainer()
    stop._handle(signal.SIGINT, sys._getframe())  # the first: stop after this batch
    assert stop.trainer._signal_connector.received_sigterm and stop.count == 1

    def write(handle):
        handle.write(b"first half ")
        stop._handle(signal.SIGINT, sys._getframe())  # the second, inside the save
        handle.write(b"second half")

    atomic_write(tmp_path / "last.ckpt", write)
    assert (tmp_path / "last.ckpt").read_bytes() == b"first half second half"
    assert stop.received == signal.SIGINT  # the app exits 130 once Lightning has stopped
    with pytest.raises(RunStopped) as stopped:  # outside a save: at once, as before
        stop._handle(signal.SIGINT, sys._getframe())
    assert stopped.value.exit_code == 130


def test_a_signal_during_a_save_outside_a_fit_stops_the_run_after_it(tmp_path):
    import os

    with pytest.raises(RunStopped) as stopped, StopSignals():

        def write(handle):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # the handler has run by now, inside the save
            handle.write(b"whole")

        atomic_write(tmp_path / "export.json", write)
        assert (tmp_path / "export.json").read_bytes() == b"whole"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.05)
    assert stopped.value.exit_code == 143
    assert (tmp_path / "export.json").read_bytes() == b"whole"


def _fitting_trainer(epochs_done: int, max_epochs: int) -> SimpleNamespace:
    """A listening trainer whose fit loop has run ``epochs_done`` of ``max_epochs`` epochs."""
    trainer = _listening_trainer()
    trainer.should_stop = False
    trainer.fit_loop = SimpleNamespace(
        max_steps=-1, max_epochs=max_epochs,
        epoch_loop=SimpleNamespace(global_step=epochs_done * 3),
        epoch_progress=SimpleNamespace(current=SimpleNamespace(processed=epochs_done)),
    )  # fmt: skip
    return trainer


def test_a_warning_signal_during_training_stops_the_run_for_a_requeue():
    stop = StopSignals(requeue_signals=(signal.SIGUSR2,))
    stop.trainer = _fitting_trainer(epochs_done=3, max_epochs=10)
    stop._handle(signal.SIGUSR2, sys._getframe())
    assert stop.trainer._signal_connector.received_sigterm and stop.requeue_asked


def test_a_warning_signal_once_the_training_is_over_is_ignored(capsys):
    stop = StopSignals(requeue_signals=(signal.SIGUSR2,))
    stop.trainer = _fitting_trainer(epochs_done=10, max_epochs=10)  # exporting in on_train_end
    stop._handle(signal.SIGUSR2, sys._getframe())
    assert not stop.trainer._signal_connector.received_sigterm and stop.received is None
    assert "after the training had finished: ignored" in capsys.readouterr().err
    stop.trainer = None  # fit has returned (e.g. fine-tuning tests the best checkpoint)
    stop.fitted()
    stop._handle(signal.SIGUSR2, sys._getframe())
    assert stop.received is None and not stop.requeue_asked
    with pytest.raises(RunStopped) as stopped:  # SIGTERM still stops the run
        stop._handle(signal.SIGTERM, sys._getframe())
    assert stopped.value.exit_code == 143


def test_after_the_run_a_warning_signal_is_ignored_and_others_get_their_handlers_back():
    import os

    def mine(signum, frame):  # a handler the caller had before the run
        raise AssertionError("not reached")

    before = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        with StopSignals(requeue_signals=(signal.SIGUSR2,)):
            pass
        assert signal.getsignal(signal.SIGTERM) is mine
        # ignored for the rest of the process, also while the interpreter exits (a Python
        # handler would be reset to the default action, which kills the finished job)
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.1)  # still alive: nothing happened
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
