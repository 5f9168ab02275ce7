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
