"""A tiny run of ``bench/representation.py``: every row is produced and the table is printed."""

from __future__ import annotations

import pytest
import timm
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


def test_init_heads_load_the_supervised_classifiers():
    bench = load_bench("representation")
    args = bench.parse_args(["--cnn", "resnet10t", "--vit-patch-size", "8", "--heads", "init"])
    states = {
        "cnn": timm.create_model("resnet10t", num_classes=3, zero_init_last=False).state_dict(),
        "vit": timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32,
                                 patch_size=8).state_dict(),
    }  # fmt: skip
    module = bench.cass_module(args, head_dim=3)
    bench.load_supervised(module, states, keep_heads=True)
    assert torch.equal(module.cnn.get_classifier().weight, states["cnn"]["fc.weight"])
    assert torch.equal(module.vit.get_classifier().bias, states["vit"]["head.bias"])
    z_cnn, z_vit = module(torch.randn(2, 3, 32, 32))
    assert z_cnn.shape == z_vit.shape == (2, 3)
    fresh = bench.cass_module(args)  # fresh 1000-wide heads: only the backbones load
    bench.load_supervised(fresh, states, keep_heads=False)
    assert torch.equal(fresh.cnn.conv1[0].weight, states["cnn"]["conv1.0.weight"])
    assert fresh.cnn.get_classifier().out_features == 1000
    with pytest.raises(RuntimeError, match="head_dim=3"):
        bench.load_supervised(bench.cass_module(args), states, keep_heads=True)


@pytest.mark.slow
def test_representation_bench_tiny_run_with_init_heads(tmp_path, capsys):
    bench = load_bench("representation")
    threads = torch.get_num_threads()
    try:
        bench.main([*TINY, "--data-dir", str(tmp_path / "data"), "--heads", "init",
                    "--only", "supervised", "cass-supervised"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "CASS heads from the supervised init: init" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in table[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("supervised init", "-", "cnn"), ("supervised init", "-", "vit"),
        ("supervised init", "CASS", "cnn"), ("supervised init", "CASS", "vit"),
    ]  # fmt: skip
    for r in rows:
        assert 0.0 <= float(r[3]) <= 1.0 and -1.0 <= float(r[5]) <= 1.0
