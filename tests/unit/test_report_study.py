"""The study report: paired verdicts, the paper's table, costs, robustness, and the files."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cass_lightning.report.verdict import (
    compare,
    paired_differences,
    paired_interval,
    t_quantile_975,
    verdicts,
)

MINUS = "\u2212"


def res(
    method: str,
    seed: int,
    value: float | None,
    *,
    arm: str = "cnn",
    fraction: float = 0.1,
    dataset: str = "brain_mri",
    mode: str = "finetune",
    **extra: Any,
) -> dict[str, Any]:
    """One result as cass-study passes it: results.json content with its method."""
    return {
        "dataset": dataset, "method": method, "arm": arm, "mode": mode,
        "label_fraction": fraction, "seed": seed, "label_seed": seed, "test_split": "test",
        "num_classes": 3, "multi_label": False,
        "metrics": {"test/f1_macro": value, "test/balanced_acc": value}, **extra,
    }  # fmt: skip


def pair(differences: list[float], other: str = "dino", base: float = 0.5) -> list[dict[str, Any]]:
    """CASS and ``other`` runs whose seed-paired differences are ``differences``."""
    return [res("cass", s, base + d) for s, d in enumerate(differences)] + [
        res(other, s, base) for s in range(len(differences))
    ]


def one(results: list[dict[str, Any]], other: str = "dino", **kw: Any):
    kw = {"dataset": "brain_mri", "mode": "finetune", "arm": "cnn", "label_fraction": 0.1,
          "metric": "f1_macro", **kw}  # fmt: skip
    return compare(results, other, **kw)


def test_t_quantiles_match_the_tables():
    known = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 10: 2.228, 30: 2.042}
    assert {df: t_quantile_975(df) for df in known} == known
    # Beyond the table: the expansion, never the too-narrow 1.96 (exact: 2.021, 2.000, 1.980).
    for df, exact in ((31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799)):
        assert t_quantile_975(df) == pytest.approx(exact, abs=5e-4)
    assert t_quantile_975(10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile_975(0)


def test_consistent_gain_is_cass_better_with_the_t_interval():
    comparison = one(pair([0.10, 0.12, 0.11]))
    interval = comparison.interval
    half = 4.303 * 0.01 / math.sqrt(3)  # sd of the differences is 0.01
    assert interval.mean == pytest.approx(0.11)
    assert (interval.low, interval.high) == (pytest.approx(0.11 - half), pytest.approx(0.11 + half))
    assert comparison.outcome == "better" and comparison.n == 3
    assert comparison.words() == (
        "CASS-CNN vs DINO-CNN at 10% labels: +0.110 macro-F1 (95% CI +0.085 to +0.135, "
        "3 paired seeds): CASS better"
    )


def test_noisy_difference_is_not_resolved():
    comparison = one(pair([0.1, -0.1, 0.05], other="imagenet"), other="imagenet")
    interval = comparison.interval
    assert interval.low < 0 < interval.high and comparison.outcome == "unresolved"
    assert comparison.words() == (
        f"CASS-CNN vs ImageNet-CNN at 10% labels: +0.017 macro-F1 (95% CI {MINUS}0.242 to "
        "+0.275, 3 paired seeds): no difference resolved with 3 seeds"
    )
    assert "better" not in comparison.words() and "worse" not in comparison.words()


def test_consistent_loss_is_cass_worse():
    comparison = one(pair([-0.05, -0.06, -0.04]))
    assert comparison.outcome == "worse"
    assert comparison.words().endswith(
        f"{MINUS}0.050 macro-F1 (95% CI {MINUS}0.075 to {MINUS}0.025, 3 paired seeds): CASS worse"
    )
    assert comparison.short() == f"worse: {MINUS}0.050 ({MINUS}0.075 to {MINUS}0.025, n=3)"


def test_one_seed_gives_no_interval_and_no_verdict():
    comparison = one(pair([0.2]))
    assert comparison.interval is None and comparison.outcome == "no verdict"
    assert comparison.words() == (
        "CASS-CNN vs DINO-CNN at 10% labels: +0.200 macro-F1 from 1 paired seed: "
        "no interval, no verdict"
    )
    assert paired_interval([0.2]) is None and paired_interval([]) is None


def test_only_shared_seeds_pair():
    results = [res("cass", 0, 0.9), res("cass", 1, 0.6), res("dino", 1, 0.5), res("dino", 2, 0.1)]
    comparison = one(results)
    assert comparison.pairs == (("1", pytest.approx(0.1)),)
    assert "1 paired seed: no interval, no verdict" in comparison.words()
    # Same seed but other labelled images (label seed) do not pair either; nor does a None value.
    moved = [res("cass", 0, 0.9), {**res("dino", 0, 0.5), "label_seed": 7}]
    assert paired_differences(moved[:1], moved[1:], "f1_macro") == []
    assert "no paired seeds" in one(moved).words() and one(moved).outcome == "no verdict"
    assert paired_differences([res("cass", 0, None)], [res("dino", 0, 0.5)], "f1_macro") == []
    with pytest.raises(ValueError, match="share seed 0"):
        paired_differences([res("cass", 0, 0.1), res("cass", 0, 0.2)], [], "f1_macro")


def test_a_missing_baseline_is_named_with_its_reason():
    reason = "no ImageNet weights file given (model.cnn_weights_file)"
    missing = [{"method": "imagenet", "arm": "cnn", "reason": reason}]
    comparison = one(pair([0.1, 0.1]), other="imagenet", missing=missing)
    assert comparison.outcome == "missing"
    assert comparison.words() == (
        f"CASS-CNN vs ImageNet-CNN at 10% labels: ImageNet-CNN missing ({reason}): no verdict"
    )
    assert "ImageNet-CNN missing (no runs at 10% labels)" in one(pair([0.1]), "imagenet").words()


def test_verdicts_cover_every_arm_fraction_and_baseline_but_not_the_robustness_grid():
    results = [
        *pair([0.1, 0.1, 0.1]),
        res("cass", 0, 0.0, pretrain={"batch_size": 8, "epochs": 50}),  # pretrained otherwise
        res("dino", 0, 0.9, arm="vit", fraction=1.0),
    ]
    found = verdicts(results, lambda dataset: "f1_macro")
    keys = [(c.arm, c.label_fraction, c.other, c.outcome) for c in found]
    assert keys == [
        ("cnn", 0.1, "dino", "better"), ("cnn", 0.1, "imagenet", "missing"),
        ("cnn", 1.0, "dino", "missing"), ("cnn", 1.0, "imagenet", "missing"),
        ("vit", 0.1, "dino", "missing"), ("vit", 0.1, "imagenet", "missing"),
        ("vit", 1.0, "dino", "missing"), ("vit", 1.0, "imagenet", "missing"),
    ]  # fmt: skip
    assert found[0].n == 3  # the grid's seed-0 run did not pair in
    assert "CASS-ViT missing" in found[6].words()
