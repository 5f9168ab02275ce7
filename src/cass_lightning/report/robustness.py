"""The robustness grid: the downstream metric after pretraining at each batch size x epochs.

Results that carry ``pretrain: {"batch_size", "epochs"}`` are points of the grid (the paper:
CASS is more robust than DINO to smaller batches and fewer epochs). Their aggregated rows
(:func:`cass_lightning.report.table.aggregate` keeps them apart from the main runs) become one
table per dataset, mode, label fraction and arm, CASS and DINO side by side, and one heatmap
figure per dataset, mode and label fraction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cass_lightning.report.collect import ARMS
from cass_lightning.report.table import (
    ARM_NAMES,
    cell,
    fraction_label,
    method_name,
    metric_name,
    order,
)


def grid_methods() -> tuple[str, ...]:
    """The pretraining methods the robustness grid repeats (the registry's ``in_grid``)."""
    from cass_lightning.modules.registry import pretraining_methods

    return tuple(m.name for m in pretraining_methods() if m.in_grid)


def shown_methods(by_method: dict[str, Any]) -> tuple[str, ...]:
    """The grid's rows of one arm: the paper's methods (run or not) and any other present."""
    from cass_lightning.modules.registry import get_method

    return tuple(m for m in grid_methods() if m in by_method or get_method(m).always_shown)


Grid = dict[str, dict[str, dict[tuple[int | None, int | None], dict[str, Any]]]]


def is_grid_row(row: dict[str, Any]) -> bool:
    """A pretrained method's row at a point of the grid (not the study's main setting)."""
    point = (row.get("pretrain_batch_size"), row.get("pretrain_epochs"))
    return row["method"] in grid_methods() and point != (None, None)


def grids(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, float], Grid]:
    """``{(dataset, mode, fraction): {arm: {method: {(batch, epochs): row}}}}`` of grid rows."""
    found: dict[tuple[str, str, float], Grid] = {}

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["dataset"], r["mode"], r["label_fraction"], order(r["arm"], ARMS),
                order(r["method"], grid_methods()))  # fmt: skip

    for row in sorted((r for r in rows if is_grid_row(r)), key=key):
        section = found.setdefault((row["dataset"], row["mode"], row["label_fraction"]), {})
        points = section.setdefault(row["arm"], {}).setdefault(row["method"], {})
        point = (row["pretrain_batch_size"], row["pretrain_epochs"])
        if point in points:  # runs of other settings at this point: shown split, not averaged
            count = points[point].get("split_count", 1) + 1
            row = {**row, "mean": None, "std": None, "n": 0, "n_missing": 0,
                   "split_count": count}  # fmt: skip
        points[point] = row
    return found


def _sorted(values: set[int | None]) -> list[int | None]:
    return sorted(values, key=lambda v: (v is None, v or 0))


def axes(by_method: dict[str, dict[tuple[int | None, int | None], Any]]) -> tuple[list, list]:
    """The batch sizes and the epochs of one arm's grid, shared by its methods."""
    points = [p for grid in by_method.values() for p in grid]
    return _sorted({b for b, _ in points}), _sorted({e for _, e in points})


def _epochs(value: int | None) -> str:
    return f"{value} epochs" if value is not None else "default epochs"


def _batch(value: int | None) -> str:
    return f"batch {value}" if value is not None else "default batch"


def spread(points: dict[tuple[int | None, int | None], dict[str, Any]]) -> float | None:
    """Max minus min of the grid's means: how far the metric moves over the grid."""
    means = [r["mean"] for r in points.values() if r["mean"] is not None]
    return max(means) - min(means) if len(means) > 1 else None


def heatmaps(grid: Grid) -> list[tuple[str, list[tuple[str, list, list, list[list]]]]]:
    """Per arm, per method: (title, batches, epochs, means[batch][epochs] with None for gaps)."""
    panels = []
    for arm, by_method in grid.items():
        batches, epochs = axes(by_method)
        row = []
        for method in shown_methods(by_method):
            points = by_method.get(method, {})
            values = [[(points.get((b, e)) or {}).get("mean") for e in epochs] for b in batches]
            row.append((f"{method_name(method)}-{ARM_NAMES.get(arm, arm)}", batches, epochs,
                        values))  # fmt: skip
        panels.append((arm, row))
    return panels


def robustness_markdown(
    rows: Sequence[dict[str, Any]], figure: Callable[[str, str, float], str] | None = None
) -> list[str]:
    """The robustness section of ``study.md``; ``figure`` names each section's heatmap file."""
    found = grids(rows)
    if not found:
        return []
    lines = [
        "## Robustness to pretraining batch size and epochs", "",
        "The downstream metric (mean ± sample std (seeds)) after pretraining at each point of "
        "the grid. The spread is the largest minus the smallest mean over the grid: a smaller "
        "spread means the method cares less about the pretraining budget. These runs are "
        "pretrained otherwise than the main runs and never enter the verdicts above.",
    ]  # fmt: skip
    for (dataset, mode, fraction), grid in found.items():
        metric = next(r["metric"] for g in grid.values() for m in g.values() for r in m.values())
        lines += ["", f"### {dataset} ({mode}), {fraction_label(fraction)} labels: "
                  f"{metric_name(metric)}"]  # fmt: skip
        for arm, by_method in grid.items():
            batches, epochs = axes(by_method)
            lines += ["", f"{ARM_NAMES.get(arm, arm)} arm:", "",
                      "| pretraining | " + " | ".join(map(_epochs, epochs)) + " |",
                      "|---|" + "---|" * len(epochs)]  # fmt: skip
            for method in shown_methods(by_method):
                points = by_method.get(method, {})
                for batch in batches:
                    cells = [cell(points.get((batch, e))) for e in epochs]
                    name = f"{method_name(method)}, {_batch(batch)}"
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
            spreads = []
            for method in shown_methods(by_method):
                points = by_method.get(method, {})
                value = spread(points)
                shown = f"{value:.4f}" if value is not None else "-"
                spreads.append(f"{method_name(method)} {shown} ({len(points)} points)")
            lines += ["", "Spread of the means over the grid: " + ", ".join(spreads) + "."]
        if figure is not None:
            name = figure(dataset, mode, fraction)
            lines += ["", f"![robustness, {dataset}, {fraction_label(fraction)}]({name})"]
    return lines
