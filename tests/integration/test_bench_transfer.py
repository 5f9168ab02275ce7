"""A tiny run of ``bench/transfer.py``: every asked-for row is produced, with readings in range,
and the best combination is made of remedies that ran."""

from __future__ import annotations

import pytest
import torch

from run_helpers import load_bench

HEADER = (
    "| method | steps | arm cos | CNN kNN | CNN probe | CNN FT | ViT kNN | ViT probe | ViT FT |"
)
TINY = [
    "--datasets", "synthetic",
    "--seeds", "0", "1",
    "--only", "init", "cass", "variance", "two_views", "best", "dino",
    "--cnn", "resnet10t",
    "--vit-patch-size", "8",
    "--budget", "0.01",
    "--init-epochs", "1",
    "--batch-size", "8",
    "--synthetic-per-class", "14",
    "--probe-epochs", "5",
    "--finetune-epochs", "1",
    "--finetune-batch-size", "4",
    "--dino-head-dim", "32",
    "--threads", "2",
]  # fmt: skip


def test_remedy_arguments_come_from_the_remedy_configs():
    bench = load_bench("transfer")
    assert bench.remedy_kwargs([]) == {}
    merged = bench.remedy_kwargs(["gentle", "two_views"])
    remedies = merged["remedies"]
    assert remedies["layer_decay"] == 0.75 and remedies["two_views"] is True
    assert merged["optimizer"]["lr"] == 1e-4 and merged["scheduler"]["name"] == "warmup_cosine"


def test_best_combination_takes_the_remedies_that_beat_paper_cass():
    bench = load_bench("transfer")

    def row(knn: float) -> list[dict]:
        return [{"cnn": {"knn": knn}, "vit": {"knn": knn}}]

    results = {"cass": row(0.5), "ema": row(0.6), "variance": row(0.7), "gentle": row(0.4)}
    assert bench.pick_best(results) == ["variance", "ema"]
    # Fewer than two beat paper CASS: the two best singles.
    results = {"cass": row(0.9), "ema": row(0.6), "variance": row(0.7), "gentle": row(0.4)}
    assert bench.pick_best(results) == ["variance", "ema"]


@pytest.mark.slow
def test_transfer_bench_tiny_run(capsys):
    bench = load_bench("transfer")
    threads = torch.get_num_threads()
    try:
        bench.main(TINY)
    finally:
        torch.set_num_threads(threads)  # main() sets the process-wide thread count
    out = capsys.readouterr().out
    assert HEADER in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {r.strip("|").split("|")[0].strip(): r for r in table[1:]}
    assert {"init", "cass", "variance", "two_views", "dino"} <= set(rows)
    best = [name for name in rows if name.startswith("best (")]
    assert best == ["best (variance+two_views)"] or best == ["best (two_views+variance)"]
    for row in rows.values():
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell in cells[3:]:
            mean = float(cell.split(" ± ")[0])
            assert 0.0 <= mean <= 1.0
            assert " ± " in cell  # two seeds: a spread is reported
