"""A study runs several trainings in one process: each must read its own peak memory."""

from __future__ import annotations

import sys

import pytest

from cass_lightning.callbacks.monitors import peak_rss_gib, reset_peak_rss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="clear_refs is Linux's")
def test_peak_resident_memory_is_reset_to_the_current_use():
    block = b"\x01" * (256 * 2**20)  # written, so resident
    high = peak_rss_gib()
    del block
    assert reset_peak_rss() is True
    after = peak_rss_gib()
    assert high - after > 0.2  # the 256 MiB block no longer counts
    again = b"\x01" * (128 * 2**20)
    assert peak_rss_gib() - after > 0.1  # and a new peak is seen
    del again
