"""A tiny run of ``bench/transfer.py``: every asked-for row is produced, with readings in range,
and the best combination is made of remedies that ran."""

from __future__ import annotations

import pytest
import timm
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


def _init_states(bench, args, classes: int = 5) -> dict:
    """What ``supervised_init`` returns, untrained: both arms with ``classes``-way heads."""
    cnn = timm.create_model(args.cnn, num_classes=classes, zero_init_last=False)
    vit = timm.create_model(args.vit, num_classes=classes, img_size=args.img_size,
                            **bench.vit_kwargs(args))  # fmt: skip
    return {"cnn": cnn.state_dict(), "vit": vit.state_dict()}


def test_init_heads_keep_the_supervised_classifiers_and_fresh_heads_do_not():
    bench = load_bench("transfer")
    args = bench.parse_args(["--cnn", "resnet10t", "--vit-patch-size", "8", "--heads", "init"])
    init = _init_states(bench, args)
    kept = bench.cass_module(args, [], init, init_head_dim=5)
    assert kept.hparams.head_dim == 5
    for arm, key in (("cnn", "fc"), ("vit", "head")):
        head = getattr(kept, arm).get_classifier()
        assert torch.equal(head.weight, init[arm][f"{key}.weight"])
        assert torch.equal(head.bias, init[arm][f"{key}.bias"])
    z_cnn, z_vit = kept(torch.randn(2, 3, 32, 32))
    assert z_cnn.shape == z_vit.shape == (2, 5)  # CASS compares the 5-class logits
    fresh = bench.cass_module(args, [], init)
    assert fresh.cnn.get_classifier().out_features == 1000
    assert torch.equal(fresh.cnn.conv1[0].weight, init["cnn"]["conv1.0.weight"])  # backbone kept
    with pytest.raises(RuntimeError, match="did not load"):
        bench.cass_module(args, [], _init_states(bench, args, classes=3), init_head_dim=5)


def test_steps_option_fixes_job_steps_and_refuses_unknown_kinds(capsys):
    bench = load_bench("transfer")
    args = bench.parse_args(["--steps", "cass=12", "dino-vit=3", "gentle=7"])
    assert args.steps == {"cass": 12, "dino-vit": 3, "gentle": 7} and args.heads == "fresh"
    for bad in (["--steps", "dino=3"], ["--steps", "cass"], ["--steps", "cass=0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    assert "--steps" in capsys.readouterr().err


@pytest.mark.slow
def test_transfer_bench_tiny_run_with_init_heads(tmp_path, capsys):
    bench = load_bench("transfer")
    threads = torch.get_num_threads()
    # One seed, two rows, fixed steps (no timing): the cheapest run through --heads init.
    seeds, only = TINY.index("--seeds"), TINY.index("--only")
    argv = [*TINY[:seeds], "--seeds", "0", "--only", "init", "cass", *TINY[only + 7:],
            "--heads", "init", "--steps", "cass=2", "--init-cache", str(tmp_path)]  # fmt: skip
    try:
        bench.main(argv)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "CASS heads init" in out and "the init's 3-class classifiers" in out
    assert "cass 2 (--steps)" in out and "ms/step" not in out  # nothing was timed
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    rows = {r.strip("|").split("|")[0].strip(): r for r in table[1:]}
    assert set(rows) == {"init", "cass"}
    assert rows["cass"].split("|")[2].strip() == "2"
    # The supervised init was saved; the same settings read it back instead of training again.
    (saved,) = tmp_path.glob("init-synthetic-*.pt")
    args = bench.parse_args(argv)
    again = bench.cached_init(bench.Split("synthetic", args), args)
    out = capsys.readouterr().out
    assert f"init: read from {saved}" in out and "init cnn:" not in out  # nothing trained
    assert set(again) == {"cnn", "vit"} and again["cnn"]["fc.weight"].shape[0] == 3
    for row in rows.values():
        for cell in [c.strip() for c in row.strip("|").split("|")][3:]:
            assert 0.0 <= float(cell.split(" ± ")[0]) <= 1.0
