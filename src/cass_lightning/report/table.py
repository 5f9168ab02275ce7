"""Averaging one metric over seeds, and the paper's table of those averages in markdown."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from cass_lightning.modules.registry import method_label as _label
from cass_lightning.report.collect import ARMS
from cass_lightning.report.identity import data_of, prepare, settings_of

CSV_FIELDS = (
    "dataset", "method", "arm", "mode", "label_fraction", "metric", "mean", "std", "n",
    "n_missing", "seeds", "test_split", "pretrain_batch_size", "pretrain_epochs", "settings",
    "data", "classes_evaluated", "split",
)  # fmt: skip


ARM_NAMES = {"cnn": "CNN", "vit": "ViT"}
METRIC_NAMES = {"f1_macro": "macro-F1", "balanced_acc": "balanced accuracy"}


def row_name(method: str, arm: str) -> str:
    """The paper's name for a row: ``CASS-CNN``, ``DINO-ViT``, ``ImageNet-CNN``, ..."""
    return f"{method_name(method)}-{ARM_NAMES.get(arm, arm)}"


def method_name(method: str) -> str:
    """``cass`` -> ``CASS``: the method's label in the registry (its name when unknown)."""
    return _label(method)


def methods_order() -> tuple[str, ...]:
    """Every registered method in the table's order (methods registered after import too)."""
    from cass_lightning.modules.registry import method_names

    return method_names()


def metric_name(metric: str) -> str:
    """``test/f1_macro`` -> ``macro-F1``: the metric as the prose names it."""
    short = metric_key(metric).split("/", 1)[1]
    return METRIC_NAMES.get(short, short)


def metric_key(metric: str) -> str:
    """``f1_macro`` and ``test/f1_macro`` both name the test-split metric results.json holds."""
    return metric if "/" in metric else f"test/{metric}"


def order(value: str, known: Sequence[str]) -> tuple[int, str]:
    """Sort key: the paper's order for known names, then anything else alphabetically."""
    return (known.index(value), value) if value in known else (len(known), value)


def pretrain_point(result: dict[str, Any]) -> tuple[int | None, int | None]:
    """``(batch_size, epochs)`` of a robustness-grid run's pretraining; ``(None, None)`` otherwise.

    Runs whose pretraining differs are different rows: they are never averaged together.
    """
    pretrain = result.get("pretrain") or {}
    if not isinstance(pretrain, dict):
        raise ValueError(
            f"{result.get('results_file', 'a result')}: pretrain must be a dict with batch_size "
            f"and epochs, not {pretrain!r}"
        )
    batch, epochs = pretrain.get("batch_size"), pretrain.get("epochs")
    return (None if batch is None else int(batch), None if epochs is None else int(epochs))


def pretrain_tag(row: dict[str, Any]) -> str:
    """`` (batch 8, 50 epochs)`` for a robustness-grid row, empty for the study's main rows."""
    batch, epochs = row.get("pretrain_batch_size"), row.get("pretrain_epochs")
    parts = [
        f"batch {batch}" if batch is not None else "",
        f"{epochs} epochs" if epochs is not None else "",
    ]
    parts = [p for p in parts if p]
    return f" ({', '.join(parts)})" if parts else ""


def _none_first(value: int | None) -> tuple[bool, int]:
    return (value is not None, value or 0)


def aggregate(results: Sequence[dict[str, Any]], metric: str = "f1_macro") -> list[dict[str, Any]]:
    """One row per (dataset, method, arm, mode, label_fraction): mean, sample std and n over seeds.

    Runs of the robustness grid (results with ``pretrain``: batch size and epochs) make rows of
    their own, one per pretraining point, with ``pretrain_batch_size`` and ``pretrain_epochs``.
    Every run counts once, and only seeds of one setting on one dataset share a row
    (:func:`~cass_lightning.report.identity.prepare`): a cell whose runs differ in settings is
    split into one row per setting (``settings`` names it, ``split`` says so).

    A run whose metric is ``None`` (non-finite: results.json has no NaN) counts in ``n_missing``
    rather than silently lowering or raising the mean. A run that does not hold the metric at
    all is an error naming the file, so a typo in ``metric`` never yields an empty table.
    """
    key = metric_key(metric)
    results, _ = prepare(results)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for result in results:
        metrics = result.get("metrics") or {}
        if key not in metrics:
            raise KeyError(
                f"{result.get('results_file', 'a result')} has no {key}; it holds "
                f"{', '.join(sorted(metrics)) or 'no metrics'}"
            )
        group = (
            str(result.get("dataset")), result["method"], str(result.get("arm")),
            str(result.get("mode")), float(result["label_fraction"]), *pretrain_point(result),
            settings_of(result), data_of(result),
        )  # fmt: skip
        groups.setdefault(group, []).append(result)
    per_cell: dict[tuple[Any, ...], int] = {}
    for group in groups:
        per_cell[group[:7]] = per_cell.get(group[:7], 0) + 1
    rows = []
    for group, runs in groups.items():
        dataset, method, arm, mode, fraction, batch, epochs, settings, data = group
        values = [float(r["metrics"][key]) for r in runs if r["metrics"][key] is not None]
        values = [v for v in values if math.isfinite(v)]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        split = per_cell[group[:7]]
        rows.append({
            "dataset": dataset, "method": method, "arm": arm, "mode": mode,
            "label_fraction": fraction, "metric": key, "mean": mean, "std": std,
            "n": len(values), "n_missing": len(runs) - len(values),
            "seeds": " ".join(str(s) for s in sorted(str(r.get("seed")) for r in runs)),
            "test_split": "+".join(sorted({str(r.get("test_split")) for r in runs})),
            "pretrain_batch_size": batch, "pretrain_epochs": epochs,
            "settings": settings[:12], "data": data[:12],
            "classes_evaluated": classes_evaluated(runs),
            "split": f"cell split: {split} settings" if split > 1 else None,
        })  # fmt: skip
    rows.sort(key=row_order)
    return rows


def classes_evaluated(runs: Sequence[dict[str, Any]]) -> str | None:
    """``"7 of 8"`` when a run's test split held no sample of some class (macro-F1 is then over
    the classes evaluated only), from ``per_class.support``; ``None`` when every class was."""
    found = set()
    for run in runs:
        support = (run.get("per_class") or {}).get("support")
        if isinstance(support, list) and support and not run.get("multi_label"):
            present = sum(1 for s in support if s)
            if present < len(support):
                found.add(f"{present} of {len(support)}")
    return ", ".join(sorted(found)) or None


def row_order(row: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of aggregated rows: dataset, mode, the paper's method and arm order, the
    pretraining point (main runs first), label fraction."""
    return (row["dataset"], row["mode"], order(row["method"], methods_order()),
            order(row["arm"], ARMS),
            _none_first(row.get("pretrain_batch_size")), _none_first(row.get("pretrain_epochs")),
            row["label_fraction"], str(row.get("settings") or ""))  # fmt: skip


def fraction_label(fraction: float) -> str:
    """0.01 -> ``1%``: the paper names label fractions in percent."""
    return f"{fraction * 100:g}%"


def cell(row: dict[str, Any] | None) -> str:
    """``mean ± std (n)`` with four decimals (``mean (1)`` for one seed: no spread is known);
    seeds without a value are counted as missing, never in ``n``; a macro-F1 over only some
    classes says over how many; ``-`` where no run of that cell has a value."""
    if row is not None and row.get("split_count"):
        return f"cell split: {row['split_count']} settings (see report.csv)"
    if row is None or row["mean"] is None:
        return "-" if row is None else f"- ({row['n_missing']} without a value)"
    count = str(row["n"]) + (f"; {row['n_missing']} missing" if row.get("n_missing") else "")
    spread = f" ± {row['std']:.4f}" if row["n"] > 1 else ""
    text = f"{row['mean']:.4f}{spread} ({count})"
    if row.get("classes_evaluated"):
        text += f" over {row['classes_evaluated']} classes"
    return text


def split_tag(row: dict[str, Any]) -> str:
    """`` [settings 1a2b3c4d]`` for a row of a split cell (runs of other settings have rows of
    their own), empty otherwise."""
    return f" [settings {str(row['settings'])[:8]}]" if row.get("split") else ""


def sections(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The rows of each (dataset, mode): one table and one plot panel each."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        found.setdefault((row["dataset"], row["mode"]), []).append(row)
    return found


def shown_method(row: dict[str, Any]) -> str:
    """A row's method as the table shows it: its label, and its pretraining or split tag."""
    return method_name(row["method"]) + pretrain_tag(row) + split_tag(row)


def markdown(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """The paper's layout: a table per dataset (and mode), rows method x arm, columns fractions."""
    key = metric_key(metric)
    lines = [f"# Downstream results: {key}", "",
             "mean ± sample std (number of seeds) of the best validation checkpoint on the "
             "evaluation split."]  # fmt: skip
    for (dataset, mode), section in sections(rows).items():
        fractions = sorted({r["label_fraction"] for r in section})
        splits = "+".join(sorted({s for r in section for s in r["test_split"].split("+")}))
        lines += ["", f"## {dataset} ({mode}, evaluated on the {splits} split)", ""]
        lines.append("| method | arm | " + " | ".join(map(fraction_label, fractions)) + " |")
        lines.append("|---|---|" + "---|" * len(fractions))
        # rows shown by the method's label (report.csv keeps its registry name)
        cells = {(shown_method(r), r["arm"], r["label_fraction"]): r for r in section}
        for method, arm in dict.fromkeys((shown_method(r), r["arm"]) for r in section):
            values = [cell(cells.get((method, arm, f))) for f in fractions]
            lines.append(f"| {method} | {arm} | " + " | ".join(values) + " |")
        lines += split_notes(section)
    return "\n".join(lines) + "\n"


def split_notes(section: Sequence[dict[str, Any]]) -> list[str]:
    """One line per split cell: which settings its runs had, so no reader averages them."""
    notes = []
    seen: dict[tuple[Any, ...], list[str]] = {}
    for r in section:
        if r.get("split"):
            where = (r["method"] + pretrain_tag(r), r["arm"], r["label_fraction"])
            seen.setdefault(where, []).append(str(r["settings"])[:8])
    for (method, arm, fraction), tags in seen.items():
        notes.append(
            f"- {method} {arm} at {fraction_label(fraction)}: cell split: {len(tags)} settings "
            f"({', '.join(tags)}); runs of different settings are never averaged."
        )
    return ["", *notes] if notes else []
