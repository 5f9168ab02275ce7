"""The study report: paired verdicts, the paper's table, costs, robustness, and the files."""

from __future__ import annotations

import ast
import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cass_lightning.report as report_package
from cass_lightning.report import (
    compare,
    default_metric,
    grids,
    layout,
    paired_differences,
    paired_interval,
    ratios,
    t_quantile_975,
    table_rows,
    verdicts,
    write_study_report,
)
from cass_lightning.report.costs import duration
from cass_lightning.report.perclass import confusion_total, per_class_f1

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


# --- the study report: table, costs, robustness, files ---------------------------------------

REASON = "no ImageNet weights file given (model.cnn_weights_file)"
CLASSES = ["glioma", "meningioma", "notumor"]


def detailed(method: str, arm: str, seed: int, value: float, fraction: float,
             **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A result with the new optional keys: class names, per-class F1 and a confusion matrix."""
    return res(method, seed, value, arm=arm, fraction=fraction, classes=CLASSES,
               per_class={"f1": [value, None if seed else 0.5, 0.9], "support": [4, 3, 5]},
               confusion=[[3, 1, 0], [0, 2, 1], [seed, 0, 5 - seed]], **extra)  # fmt: skip


def cost(method: str, arm: str, seconds: float, *, epochs: int = 100, batch: int = 16,
         dataset: str = "brain_mri") -> dict[str, Any]:  # fmt: skip
    return {"method": method, "arm": arm, "fit_seconds": seconds, "images_per_s": 50.0,
            "peak_memory_gib": 2.5, "memory_kind": "gpu", "epochs": epochs, "batch_size": batch,
            "steps": 300, "dataset": dataset}  # fmt: skip


STUDY_RESULTS = [
    *(detailed("cass", arm, s, v + (0.05 if arm == "vit" else 0), f)
      for arm in ("cnn", "vit") for f in (0.1, 1.0) for s, v in enumerate((0.70, 0.72, 0.71))),
    *(detailed("dino", arm, s, 0.60, f) for arm in ("cnn", "vit") for f in (0.1, 1.0)
      for s in range(3)),
    *(detailed("random", "cnn", s, 0.30, f) for f in (0.1, 1.0) for s in range(3)),
    *(res(m, s, v, fraction=0.1, pretrain={"batch_size": b, "epochs": 50})
      for m, b, s, v in (("cass", 8, 0, 0.6), ("cass", 8, 1, 0.7), ("cass", 32, 0, 0.66),
                         ("dino", 8, 0, 0.4), ("dino", 32, 0, 0.62))),
]  # fmt: skip
STUDY_COSTS = [cost("cass", "both", 3000.0), cost("dino", "cnn", 4000.0),
               cost("dino", "vit", 6000.0)]  # fmt: skip
STUDY_MISSING = [{"method": "imagenet", "arm": a, "reason": REASON} for a in ("cnn", "vit")]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    """One study report written from the results above (figures are slow: write it once)."""
    out = tmp_path_factory.mktemp("study") / "report"
    paths = write_study_report(STUDY_RESULTS, STUDY_COSTS, out, missing=STUDY_MISSING,
                               title="Tiny study")  # fmt: skip
    return {"out": out, "paths": paths, "md": paths["study.md"].read_text()}


def test_isic_is_read_on_balanced_accuracy():
    assert [default_metric(d) for d in ("isic2019", "ISIC-2019", "isic_2019", "brain_mri",
                                        "dermofit", "isic2020")] == [
        "balanced_acc", "balanced_acc", "balanced_acc", "f1_macro", "f1_macro", "f1_macro",
    ]  # fmt: skip
    rows = table_rows([res("cass", 0, 0.5, dataset="isic2019"), res("cass", 0, 0.4)])
    assert {(r["dataset"], r["metric"]) for r in rows} == {
        ("isic2019", "test/balanced_acc"), ("brain_mri", "test/f1_macro"),
    }  # fmt: skip
    assert {r["metric"] for r in table_rows([res("cass", 0, 0.5, dataset="isic2019")],
                                            metric="f1_macro")} == {"test/f1_macro"}  # fmt: skip


def test_rows_keep_the_papers_order_and_missing_rows_show_their_reason(study):
    assert layout(STUDY_RESULTS, STUDY_MISSING) == [
        ("cass", "cnn"), ("cass", "vit"), ("dino", "cnn"), ("dino", "vit"),
        ("imagenet", "cnn"), ("imagenet", "vit"), ("random", "cnn"), ("random", "vit"),
    ]  # fmt: skip
    md = study["md"]
    table = md[md.index("| row | 10% | 100% | note |") :].split("\n\n")[0].splitlines()[2:]
    assert [line.split(" | ")[0] for line in table] == [
        "| CASS-CNN", "| CASS-ViT", "| DINO-CNN", "| DINO-ViT", "| ImageNet-CNN",
        "| ImageNet-ViT", "| Random-CNN", "| Random-ViT",
    ]  # fmt: skip
    assert table[0] == "| CASS-CNN | 0.7100 ± 0.0100 (3) | 0.7100 ± 0.0100 (3) |  |"
    assert table[4] == f"| ImageNet-CNN | missing | missing | {REASON} |"
    assert table[7] == "| Random-ViT | missing | missing | no runs (no reason given) |"
    # Without a missing entry the ImageNet rows are still shown, as unexplained gaps.
    assert ("imagenet", "vit") in layout(STUDY_RESULTS)
    with study["paths"]["report.csv"].open() as fh:
        saved = list(csv.DictReader(fh))
    gaps = [(r["method"], r["arm"], r["label_fraction"], r["n"], r["mean"], r["note"])
            for r in saved if r["note"]]  # fmt: skip
    assert gaps == [
        ("imagenet", "cnn", "0.1", "0", "", REASON), ("imagenet", "cnn", "1.0", "0", "", REASON),
        ("imagenet", "vit", "0.1", "0", "", REASON), ("imagenet", "vit", "1.0", "0", "", REASON),
        ("random", "vit", "0.1", "0", "", "no runs (no reason given)"),
        ("random", "vit", "1.0", "0", "", "no runs (no reason given)"),
    ]  # fmt: skip


def test_study_md_states_each_verdict_in_words(study):
    md = study["md"]
    half = 4.303 * 0.01 / math.sqrt(3)
    assert (
        "- CASS-CNN vs DINO-CNN at 10% labels: +0.110 macro-F1 (95% CI "
        f"+{0.11 - half:.3f} to +{0.11 + half:.3f}, 3 paired seeds): CASS better"
    ) in md
    assert f"- CASS-ViT vs ImageNet-ViT at 100% labels: ImageNet-ViT missing ({REASON}): " \
           "no verdict" in md  # fmt: skip
    assert "CASS better in 4 of 8 comparisons, worse in 0, no difference resolved in 0, " \
           "no verdict in 4" in md  # fmt: skip
    with study["paths"]["verdicts.csv"].open() as fh:
        saved = list(csv.DictReader(fh))
    assert len(saved) == 8 and {r["outcome"] for r in saved} == {"better", "missing"}
    first = saved[0]
    assert (first["arm"], first["other"], first["n_pairs"], first["paired_seeds"]) == (
        "cnn", "dino", "3", "0 1 2")  # fmt: skip
    assert float(first["ci_low"]) == pytest.approx(0.11 - half)


def test_cost_ratios_are_cass_time_over_dino_time(study):
    (found,) = ratios(STUDY_COSTS)
    assert (found["vs_both"], found["vs_cnn"], found["vs_vit"]) == (0.3, 0.75, 0.5)
    assert "| brain_mri | 100 | unknown device | 16 / 16 | 0.30x (70% less time) | " \
           "0.75x (25% less time) | 0.50x (50% less time) |" in study["md"]  # fmt: skip
    assert "| brain_mri | CASS (both arms) | 100 | 16 | 300 | 50 min 0 s | 50.0 | " \
           "2.50 GiB (GPU) | unknown device | 1 |" in study["md"]  # fmt: skip
    # Only DINO-ViT ran at these epochs, at another batch size: that one, no "both" ratio.
    costs = [
        cost("cass", "both", 100.0, batch=16),
        cost("dino", "vit", 400.0, batch=32),
        cost("dino", "cnn", 50.0, epochs=300),
        cost("dino", "vit", 1.0, epochs=300),
    ]
    (found,) = ratios(costs)
    assert (found["vs_both"], found["vs_cnn"], found["vs_vit"]) == (None, None, 0.25)
    assert found["dino_batch_sizes"] == [32]
    # Repeated runs of one setting are averaged; other datasets never mix in.
    costs = [
        cost("cass", "both", 100.0),
        cost("cass", "both", 300.0),
        cost("dino", "cnn", 400.0),
        cost("dino", "vit", 400.0),
        cost("dino", "vit", 1.0, dataset="other"),
    ]
    assert ratios(costs)[0]["vs_both"] == 0.25
    assert [duration(s) for s in (12.34, 252.4, 25_860.0)] == ["12.3 s", "4 min 12 s",
                                                              "7 h 11 min"]  # fmt: skip
    with pytest.raises(ValueError, match=r"entry 0 .* lacks fit_seconds"):
        ratios([{**cost("cass", "both", 1.0), "fit_seconds": None}])


def test_robustness_table_holds_the_grid_means(study):
    rows = table_rows(STUDY_RESULTS)
    ((key, grid),) = grids(rows).items()
    assert key == ("brain_mri", "finetune", 0.1)
    cass, dino = grid["cnn"]["cass"], grid["cnn"]["dino"]
    assert (cass[(8, 50)]["mean"], cass[(8, 50)]["n"]) == (pytest.approx(0.65), 2)
    assert cass[(32, 50)]["mean"] == 0.66 and dino[(8, 50)]["mean"] == 0.4
    md = study["md"]
    assert "| pretraining | 50 epochs |" in md
    assert "| CASS, batch 8 | 0.6500 ± 0.0707 (2) |" in md
    assert "| DINO, batch 32 | 0.6200 (1) |" in md
    assert (
        "Spread of the means over the grid: CASS 0.0100 (2 points), DINO 0.2200 (2 points)." in md
    )
    # The grid's runs stay out of the main table: CASS-CNN at 10% still averages its 3 seeds.
    main = next(
        r for r in rows
        if (r["method"], r["arm"], r["label_fraction"], r["pretrain_batch_size"])
        == ("cass", "cnn", 0.1, None)
    )  # fmt: skip
    assert (main["n"], main["mean"]) == (3, pytest.approx(0.71))


def test_per_class_scores_and_confusions_pool_the_seeds():
    runs = [detailed("cass", "cnn", s, 0.7, 0.1) for s in range(3)]
    f1 = per_class_f1(runs)
    assert f1["classes"] == CLASSES and f1["support"] == [4, 3, 5] and f1["n"] == 3
    assert f1["f1"] == [pytest.approx(0.7), 0.5, pytest.approx(0.9)]  # None left out, not 0
    assert confusion_total(runs)["matrix"] == [[9, 3, 0], [0, 6, 3], [3, 0, 12]]
    assert per_class_f1([res("cass", 0, 0.5)]) is None
    assert confusion_total([{**runs[0], "confusion": None}]) is None  # multi-label
    with pytest.raises(ValueError, match="names classes"):
        per_class_f1([runs[0], {**runs[1], "classes": ["a", "b", "c"]}])
    with pytest.raises(ValueError, match="confusion must be 3x3"):
        confusion_total([{**runs[0], "confusion": [[1, 2], [3, 4]]}])


def test_study_files_are_written_and_linked(study):
    out, paths, md = study["out"], study["paths"], study["md"]
    pngs = sorted(name for name in paths if name.endswith(".png"))
    assert pngs == [
        "confusion_brain_mri_finetune_100pct.png", "confusion_brain_mri_finetune_10pct.png",
        "fractions.png", "per_class_f1_brain_mri_finetune_100pct.png",
        "per_class_f1_brain_mri_finetune_10pct.png", "robustness_brain_mri_finetune_10pct.png",
    ]  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(paths)
    for name in pngs:
        data = paths[name].read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        assert f"]({name})" in md  # study.md links every figure
    assert md.startswith("# Tiny study\n")


def test_an_existing_file_stops_the_study_report_before_anything_is_written(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "robustness_brain_mri_finetune_10pct.png").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_study_report(STUDY_RESULTS, STUDY_COSTS, out, missing=STUDY_MISSING)
    assert [p.name for p in out.iterdir()] == ["robustness_brain_mri_finetune_10pct.png"]
    assert (out / "robustness_brain_mri_finetune_10pct.png").read_bytes() == b"mine"
    with pytest.raises(ValueError, match="result 0 lacks method"):
        write_study_report([{"dataset": "x"}], [], tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_the_report_package_imports_no_training_stack():
    package = Path(report_package.__file__).parent
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imported |= {str(node.module).split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}  # fmt: skip
        assert not imported & {"torch", "lightning", "hydra", "omegaconf", "os"}, source.name
    # Importing it pulls in none of them (the package root loads its models lazily), nor
    # matplotlib until a figure is drawn.
    code = (
        "import sys; import cass_lightning.report; "
        "print(sorted(m for m in ('torch', 'lightning', 'hydra', 'omegaconf', 'matplotlib') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
