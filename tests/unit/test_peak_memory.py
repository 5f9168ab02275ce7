"""A study runs several trainings in one process: each must read its own peak memory."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

#: Run in a fresh interpreter: in the suite's own process, threads and caches left by earlier
#: tests can allocate or free memory between the readings.
_RESET_CHECK = """
from cass_lightning.callbacks.monitors import peak_rss_gib, reset_peak_rss
block = b"\\x01" * (256 * 2**20)  # written, so resident
high = peak_rss_gib()
del block
assert reset_peak_rss() is True
after = peak_rss_gib()
assert high - after > 0.2, (high, after)  # the 256 MiB block no longer counts
again = b"\\x01" * (128 * 2**20)
assert peak_rss_gib() - after > 0.1, (peak_rss_gib(), after)  # and a new peak is seen
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="clear_refs is Linux's")
def test_peak_resident_memory_is_reset_to_the_current_use():
    proc = subprocess.run([sys.executable, "-c", _RESET_CHECK], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize(("reset", "kind"), [(True, "cpu_rss"), (False, "cpu_rss_process")])
def test_the_cpu_peak_says_whether_it_is_the_runs_own(monkeypatch, reset, kind):
    """Where the peak cannot be reset, the run's summary says it is the whole process's."""
    import torch

    from cass_lightning.callbacks import ImagesPerSecond, monitors

    monkeypatch.setattr(monitors, "reset_peak_rss", lambda: reset)
    cpu = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda m, **kw: None)
    callback = ImagesPerSecond()
    callback.on_train_start(None, cpu)
    callback.on_train_epoch_start(None, cpu)
    callback.on_train_epoch_end(None, cpu)
    assert callback.memory_kind == kind and callback.peak_memory_gib > 0
