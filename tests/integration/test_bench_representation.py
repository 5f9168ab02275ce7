"""A tiny run of ``bench/representation.py``: every row is produced and the table is printed."""

from __future__ import annotations

import pytest
import torch

from run_helpers import load_bench

HEADER = "| start | method | arm | kNN | probe | arm cos | spread (out) | spread (pooled) |"
TINY = [
    "--cnn", "resnet10t",
    "--budget", "0.5",
    "--images-per-class", "12",
    "--val-images-per-class", "4",
    "--batch-size", "8",
    "--probe-epochs", "5",
    "--dino-head-dim", "32",
    "--threads", "2",
]  # fmt: skip


@pytest.mark.slow
def test_representation_bench_tiny_run(tmp_path, capsys):
    bench = load_bench("representation")
    threads = torch.get_num_threads()
    try:
        bench.main([*TINY, "--data-dir", str(tmp_path / "data")])
    finally:
        torch.set_num_threads(threads)  # main() sets the process-wide thread count
    out = capsys.readouterr().out
    assert HEADER in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    rows = table[1:]
    # 3 starting points x 2 arms, CASS from 2 starts x 2 arms, DINO from 2 starts x 2 arms.
    assert len(rows) == 14
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert 0.0 <= float(cells[3]) <= 1.0 and 0.0 <= float(cells[4]) <= 1.0
    assert sum("| CASS |" in r for r in rows) == 4 and sum("| DINO |" in r for r in rows) == 4
