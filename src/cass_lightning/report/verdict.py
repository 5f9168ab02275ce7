"""Paired statistics and the words of the verdict: does CASS beat a baseline, seed for seed?

For one dataset, mode, arm and label fraction, the runs of CASS and of the other method are
paired by seed (and label seed: the study fine-tunes every method of one seed on the same
labelled images), so each pair's difference ``CASS - other`` removes the variation the labelled
subset brings. The mean difference gets a 95% confidence interval from Student's t with
``n - 1`` degrees of freedom; the words never claim more than that interval supports.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cass_lightning.report.collect import ARMS, missing_reason
from cass_lightning.report.identity import settings_of
from cass_lightning.report.table import (
    fraction_label,
    method_name,
    metric_key,
    metric_name,
    order,
    pretrain_point,
    row_name,
)

# t(0.975, df): two-sided 95% quantiles of Student's t for df = 1..30.
T_975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip


def compared_methods(present: Iterable[str] = ()) -> tuple[str, ...]:
    """What CASS is compared with, in the verdict's order: the registry's ``compared``
    methods that the study always shows, and the others (opt-in ones such as BYOL) when
    ``present`` names them."""
    from cass_lightning.modules.registry import methods

    shown = set(present)
    return tuple(m.name for m in methods()
                 if m.compared and (m.always_shown or m.name in shown))  # fmt: skip


#: The shipped baselines CASS is always compared with (DINO, ImageNet).
BASELINES = compared_methods()


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (a 95% two-sided CI).

    A table for df 1..30; beyond it the Cornish-Fisher expansion around the normal 1.960,
    which is within 0.001 of the exact value there and, unlike 1.96 itself, never too narrow.
    """
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, not {df}")
    if df in T_975:
        return T_975[df]
    z = statistics.NormalDist().inv_cdf(0.975)
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences and its 95% confidence interval from ``n`` pairs."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_interval(differences: Sequence[float]) -> Interval | None:
    """``mean ± t(0.975, n-1) * sd / sqrt(n)``; ``None`` for fewer than two differences."""
    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = t_quantile_975(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def signed(value: float) -> str:
    """``+0.042`` / ``−0.020`` (a true minus sign), three decimals."""
    return f"{value:+.3f}".replace("-", "\u2212")


def seed_order(seed: str) -> tuple[int, int, str]:
    """Sort key: numeric seeds by value (2 before 10), then any other name alphabetically."""
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


def _value(result: dict[str, Any], key: str) -> float | None:
    value = (result.get("metrics") or {}).get(key)
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _by_seed(runs: Sequence[dict[str, Any]], key: str) -> dict[tuple[str, str], float | None]:
    """Each run's value under its pairing key (seed, label seed); a repeated key is an error."""
    found: dict[tuple[str, str], float | None] = {}
    for run in runs:
        pair_key = (str(run.get("seed")), str(run.get("label_seed")))
        if pair_key in found:
            raise ValueError(
                f"two {row_name(run['method'], str(run.get('arm')))} runs of "
                f"{run.get('dataset')} at {fraction_label(float(run['label_fraction']))} labels "
                f"share seed {pair_key[0]} (label seed {pair_key[1]}): a seed must be run once "
                f"({run.get('results_file', 'no file named')})"
            )
        found[pair_key] = _value(run, key)
    return found


def paired_differences(
    runs: Sequence[dict[str, Any]], other_runs: Sequence[dict[str, Any]], metric: str
) -> list[tuple[str, float]]:
    """``(seed, value - other value)`` for each seed with a finite value on both sides.

    Runs pair when seed and ``label_seed`` both agree; a seed present on one side only, or
    without a value on either, is left out (never paired with a different seed).
    """
    key = metric_key(metric)
    mine, theirs = _by_seed(runs, key), _by_seed(other_runs, key)
    pairs = [
        (seed, mine[(seed, label)] - theirs[(seed, label)])  # type: ignore[operator]
        for seed, label in mine
        if (seed, label) in theirs
        and mine[(seed, label)] is not None
        and theirs[(seed, label)] is not None
    ]
    return sorted(pairs, key=lambda p: seed_order(p[0]))


@dataclass(frozen=True)
class Comparison:
    """CASS against one baseline at one (dataset, mode, arm, label fraction), with its verdict."""

    dataset: str
    mode: str
    arm: str
    label_fraction: float
    metric: str
    method: str
    other: str
    pairs: tuple[tuple[str, float], ...] = ()
    missing_row: str | None = None  # "DINO-CNN" when one side has no runs ...
    reason: str | None = None  # ... and why
    seeds: tuple[str, str] = ("", "")  # each side's seeds, shown when none of them pair
    blocked: str | None = None  # "CASS-CNN cell split: 2 settings": no pairs are formed
    #: Why the two sides cannot be compared (other encoders, resolution or pretraining budget).
    incomparable: str | None = None

    @property
    def n(self) -> int:
        return len(self.pairs)

    @property
    def interval(self) -> Interval | None:
        return paired_interval([d for _, d in self.pairs])

    @property
    def outcome(self) -> str:
        """``better``, ``worse``, ``unresolved``, ``no verdict`` (under 2 pairs) or ``missing``."""
        if self.missing_row:
            return "missing"
        if self.blocked or self.incomparable:
            return "no verdict"
        interval = self.interval
        if interval is None:
            return "no verdict"
        if not interval.excludes_zero:
            return "unresolved"
        return "better" if interval.mean > 0 else "worse"

    @property
    def names(self) -> tuple[str, str]:
        return row_name(self.method, self.arm), row_name(self.other, self.arm)

    def words(self) -> str:
        """One sentence that claims no more than the interval supports."""
        mine, theirs = self.names
        head = f"{mine} vs {theirs} at {fraction_label(self.label_fraction)} labels: "
        if self.missing_row:
            return head + f"{self.missing_row} missing ({self.reason}): no verdict"
        if self.blocked:
            return head + f"{self.blocked}, never averaged together: no verdict"
        if self.incomparable:
            return head + f"not comparable, {self.incomparable}: no verdict"
        if self.n == 0:
            return head + (
                "no paired seeds, none with the same seed and label seed "
                f"({mine} seeds {self.seeds[0] or 'none'}, {theirs} seeds "
                f"{self.seeds[1] or 'none'}): no verdict"
            )
        what = metric_name(self.metric)
        interval = self.interval
        if interval is None:
            return head + (
                f"{signed(self.pairs[0][1])} {what} from 1 paired seed: no interval, no verdict"
            )
        tail = {
            "better": f"{method_name(self.method)} better",
            "worse": f"{method_name(self.method)} worse",
            "unresolved": f"no difference resolved with {self.n} seeds",
        }[self.outcome]
        return head + (
            f"{signed(interval.mean)} {what} (95% CI {signed(interval.low)} to "
            f"{signed(interval.high)}, {self.n} paired seeds): {tail}"
        )

    def short(self) -> str:
        """The verdict for a summary table cell."""
        if self.missing_row:
            return f"no verdict ({self.missing_row} missing)"
        if self.blocked:
            return "no verdict (cell split)"
        if self.incomparable:
            return f"no verdict (not comparable: {self.incomparable.split(':')[0]})"
        if self.n == 0:
            return "no verdict (no paired seeds)"
        interval = self.interval
        if interval is None:
            return f"no verdict (1 seed: {signed(self.pairs[0][1])})"
        label = {"better": "better", "worse": "worse", "unresolved": "not resolved"}[self.outcome]
        return (
            f"{label}: {signed(interval.mean)} ({signed(interval.low)} to "
            f"{signed(interval.high)}, n={self.n})"
        )

    def as_row(self) -> dict[str, Any]:
        """The comparison as a ``verdicts.csv`` row (empty cells where there is no interval)."""
        interval = self.interval
        return {
            "dataset": self.dataset, "mode": self.mode, "arm": self.arm,
            "label_fraction": self.label_fraction, "metric": metric_key(self.metric),
            "method": self.method, "other": self.other, "n_pairs": self.n,
            "mean_difference": interval.mean if interval else (
                self.pairs[0][1] if self.n == 1 else None),
            "ci_low": interval.low if interval else None,
            "ci_high": interval.high if interval else None,
            "outcome": self.outcome, "paired_seeds": " ".join(s for s, _ in self.pairs),
            "words": self.words(),
        }  # fmt: skip


VERDICT_FIELDS = (
    "dataset", "mode", "arm", "label_fraction", "metric", "method", "other", "n_pairs",
    "mean_difference", "ci_low", "ci_high", "outcome", "paired_seeds", "words",
)  # fmt: skip


def main_runs(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study's main runs: every result that is not a point of the robustness grid."""
    return [r for r in results if pretrain_point(r) == (None, None)]


def compare(
    results: Sequence[dict[str, Any]],
    other: str,
    *,
    dataset: str,
    mode: str,
    arm: str,
    label_fraction: float,
    metric: str,
    missing: Sequence[dict[str, Any]] = (),
    method: str = "cass",
) -> Comparison:
    """``method`` (CASS) against ``other`` on one arm and label fraction of one dataset and mode.

    Only the main runs count (robustness-grid runs pretrained differently are left out). A side
    without runs makes the comparison *missing*, with the reason from ``missing`` when given.
    """

    def runs_of(name: str) -> list[dict[str, Any]]:
        return [
            r for r in main_runs(results)
            if (r["method"], str(r.get("arm")), str(r.get("dataset")), str(r.get("mode")))
            == (name, arm, dataset, mode)
            and float(r["label_fraction"]) == float(label_fraction)
        ]  # fmt: skip

    base = {"dataset": dataset, "mode": mode, "arm": arm, "label_fraction": float(label_fraction),
            "metric": metric_key(metric), "method": method, "other": other}  # fmt: skip
    mine, theirs = runs_of(method), runs_of(other)
    for name, runs in ((method, mine), (other, theirs)):
        if not runs:
            reason = missing_reason(missing, name, arm, dataset) or (
                f"no runs at {fraction_label(float(label_fraction))} labels"
            )
            return Comparison(**base, missing_row=row_name(name, arm), reason=reason)
    for name, runs in ((method, mine), (other, theirs)):
        kinds = {settings_of(r) for r in runs}
        if len(kinds) > 1:
            blocked = f"{row_name(name, arm)} cell split: {len(kinds)} settings"
            return Comparison(**base, blocked=blocked)
    differ = incomparable(mine, theirs, (row_name(method, arm), row_name(other, arm)))
    if differ:
        return Comparison(**base, incomparable=differ)
    seeds = tuple(
        " ".join(sorted({str(r.get("seed")) for r in rs}, key=seed_order)) for rs in (mine, theirs)
    )
    pairs = tuple(paired_differences(mine, theirs, metric))
    return Comparison(**base, pairs=pairs, seeds=seeds)  # type: ignore[arg-type]


#: What two sides of a verdict must share: the encoder, the input size and the pretraining
#: budget (a better score bought with a larger model or more pretraining is no verdict). The
#: budget (``pretrain_budget``: epochs and batch of the pretraining run) is compared where both
#: sides were pretrained; the ImageNet and random baselines have none.
COMPARED_ON = (("encoders", "timm_name"), ("resolution", "img_size"),
               ("pretraining budget", "pretrain_budget"))  # fmt: skip


def incomparable(
    mine: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], names: tuple[str, str]
) -> str | None:
    """Why ``mine`` and ``theirs`` cannot be compared (``"other encoders: CASS-CNN resnet10t,
    DINO-CNN resnet50"``), or ``None`` when they share what :data:`COMPARED_ON` lists."""

    def shown(runs: Sequence[dict[str, Any]], key: str) -> str:
        values = {json.dumps(r.get(key), sort_keys=True) for r in runs}
        return " / ".join(sorted(v.replace('"', "") for v in values))

    for what, key in COMPARED_ON:
        if key == "pretrain_budget" and not all(r.get(key) for r in [*mine, *theirs]):
            continue
        a, b = shown(mine, key), shown(theirs, key)
        if a != b:
            return f"other {what}: {names[0]} {a}, {names[1]} {b}"
    return None


def verdicts(
    results: Sequence[dict[str, Any]],
    metric_for: Callable[[str], str],
    *,
    missing: Sequence[dict[str, Any]] = (),
    others: Sequence[str] = BASELINES,
    method: str = "cass",
) -> list[Comparison]:
    """Every comparison the study can make: per dataset, mode, arm, fraction and baseline.

    Arms and fractions are those any main run of that dataset and mode has; ``metric_for`` names
    the metric of each dataset (:func:`cass_lightning.report.study.default_metric` by default).
    """
    runs = main_runs(results)
    found = []
    for dataset, mode in sorted({(str(r.get("dataset")), str(r.get("mode"))) for r in runs}):
        section = [
            r for r in runs if (str(r.get("dataset")), str(r.get("mode"))) == (dataset, mode)
        ]
        arms = sorted({str(r.get("arm")) for r in section}, key=lambda a: order(a, ARMS))
        fractions = sorted({float(r["label_fraction"]) for r in section})
        for arm in arms:
            for fraction in fractions:
                for other in others:
                    found.append(compare(
                        results, other, dataset=dataset, mode=mode, arm=arm,
                        label_fraction=fraction, metric=metric_for(dataset), missing=missing,
                        method=method,
                    ))  # fmt: skip
    return found
