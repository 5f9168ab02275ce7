"""The study report: the paper's tables, the verdicts in words, costs, robustness and figures.

``cass-study`` runs the whole protocol and calls :func:`write_study_report` to write
``<study>/report/``. The inputs are described in the package docstring
(:mod:`cass_lightning.report`); everything here is plain Python plus matplotlib for the PNGs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cass_lightning.report.collect import ARMS, missing_reason
from cass_lightning.report.costs import check_costs, cost_markdown, machines_markdown
from cass_lightning.report.identity import prepare, settings_of
from cass_lightning.report.perclass import classes_of, confusion_total, per_class_f1
from cass_lightning.report.plots import plot, plot_confusions, plot_per_class_f1, plot_robustness
from cass_lightning.report.robustness import grids, heatmaps, robustness_markdown
from cass_lightning.report.table import (
    CSV_FIELDS,
    aggregate,
    cell,
    fraction_label,
    methods_order,
    metric_key,
    metric_name,
    order,
    row_name,
    row_order,
    sections,
)
from cass_lightning.report.validate import check_result
from cass_lightning.report.verdict import (
    VERDICT_FIELDS,
    Comparison,
    compared_methods,
    main_runs,
    verdicts,
)
from cass_lightning.report.writer import StagedFolder, refuse_existing, write_csv

STUDY_FILE = "study.md"
TABLE_FILE = "report.csv"
VERDICTS_FILE = "verdicts.csv"
FRACTIONS_FILE = "fractions.png"
STUDY_CSV_FIELDS = (*CSV_FIELDS, "note")
RESULT_KEYS = ("dataset", "method", "arm", "mode", "label_fraction", "seed", "metrics")


def paper_methods() -> tuple[str, ...]:
    """Rows the study always shows, run or missing (the registry's ``always_shown``)."""
    from cass_lightning.modules.registry import methods

    return tuple(m.name for m in methods() if m.always_shown)


FIGURE_KINDS = {"per_class_f1": "per-class F1", "confusion": "confusion matrices"}


def default_metric(dataset: str, layout: str | None = None) -> str:
    """The paper's metric for a dataset: balanced accuracy for ISIC-2019, macro-F1 otherwise.

    Chosen by the dataset's ``layout`` where its results record it; else by its name, without
    the ``[data ...]`` tag a dataset told apart by its files carries (it is still ISIC-2019)."""
    if layout is not None:
        return "balanced_acc" if layout == "isic2019" else "f1_macro"
    name = re.sub(r"\s*\[data [0-9a-f]+\]$", "", dataset)
    return "balanced_acc" if re.sub(r"[^a-z0-9]", "", name.lower()) == "isic2019" else "f1_macro"


def layouts_of(results: Sequence[dict[str, Any]]) -> dict[str, str | None]:
    """Each dataset's layout, where its results record one (a dataset name -> its layout)."""
    found: dict[str, str | None] = {}
    for result in results:
        layout = result.get("layout")
        name = str(result["dataset"])
        found[name] = found.get(name) or (str(layout) if layout else None)
    return found


def check_results(results: Sequence[dict[str, Any]]) -> None:
    """Raise naming the result and the key when a result lacks what the report reads, or holds
    a value the report cannot trust (:func:`~cass_lightning.report.validate.check_result`)."""
    if not results:
        raise ValueError("no fine-tuning results to report")
    for i, result in enumerate(results):
        where = (result.get("results_file") if isinstance(result, dict) else None) or f"result {i}"
        absent = [k for k in RESULT_KEYS if isinstance(result, dict) and k not in result]
        if absent:
            raise ValueError(
                f"{where} lacks {', '.join(absent)} (label each result with its method, e.g. "
                "with cass_lightning.report.method_of)"
            )
        check_result(result, str(where), RESULT_KEYS)


def layout(
    results: Sequence[dict[str, Any]], missing: Sequence[dict[str, Any]] = ()
) -> list[tuple[str, str]]:
    """The table's rows in the paper's order: CASS, DINO, ImageNet (always, run or missing),
    Random and any other method when present, each on every arm that any result or missing
    entry names."""
    named = [(str(r["method"]), str(r["arm"])) for r in results]
    named += [(str(m["method"]), str(m["arm"])) for m in missing]
    methods = sorted(
        {m for m, _ in named} | set(paper_methods()), key=lambda m: order(m, methods_order())
    )
    arms = sorted({a for _, a in named}, key=lambda a: order(a, ARMS))
    return [(m, a) for m in methods for a in arms]


def figure_name(kind: str, dataset: str, mode: str, fraction: float) -> str:
    """``confusion_isic2019_finetune_10pct.png``: safe on every file system."""
    slug = "_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", s) for s in (kind, dataset, mode))
    return f"{slug}_{fraction * 100:g}pct.png"


def table_rows(
    results: Sequence[dict[str, Any]],
    missing: Sequence[dict[str, Any]] = (),
    metric: str | None = None,
) -> list[dict[str, Any]]:
    """``report.csv``'s rows: each dataset aggregated on its metric, plus one row per label
    fraction for every layout row without main runs (``n`` 0, the reason in ``note``)."""
    check_results(results)
    rows: list[dict[str, Any]] = []
    layouts = layouts_of(results)
    for dataset in sorted({str(r["dataset"]) for r in results}):
        chosen = metric or default_metric(dataset, layouts[dataset])
        rows += aggregate([r for r in results if str(r["dataset"]) == dataset], chosen)
    rows = [{**r, "note": None} for r in rows]
    main = [r for r in rows if r["pretrain_batch_size"] is None and r["pretrain_epochs"] is None]
    for (dataset, mode), section in sections(main).items():
        present = {(r["method"], r["arm"]) for r in section}
        for method, arm in layout(results, missing):
            if (method, arm) in present:
                continue
            note = missing_reason(missing, method, arm, dataset) or "no runs (no reason given)"
            for fraction in sorted({r["label_fraction"] for r in section}):
                rows.append({
                    "dataset": dataset, "method": method, "arm": arm, "mode": mode,
                    "label_fraction": fraction, "metric": section[0]["metric"], "mean": None,
                    "std": None, "n": 0, "n_missing": 0, "seeds": "", "test_split": "",
                    "pretrain_batch_size": None, "pretrain_epochs": None, "note": note,
                })  # fmt: skip
    return sorted(rows, key=row_order)


def split_cell(rows: Sequence[dict[str, Any]] | None) -> str:
    """One table cell; runs of different settings in one cell are shown side by side, each
    with its settings digest, never averaged together."""
    if not rows:
        return cell(None)
    if len(rows) == 1:
        return cell(rows[0])
    parts = [f"{cell(r)} [settings {str(r.get('settings'))[:8]}]" for r in rows]
    return f"cell split: {len(rows)} settings: " + "; ".join(parts)


def paper_table(section: Sequence[dict[str, Any]], rows: Sequence[tuple[str, str]]) -> list[str]:
    """One dataset's table: rows method x arm in ``rows``' order, columns the label fractions,
    cells ``mean ± std (n)``; a row without runs reads ``missing`` with its reason."""
    fractions = sorted({r["label_fraction"] for r in section})
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in section:
        cells.setdefault((r["method"], r["arm"], r["label_fraction"]), []).append(r)
    notes = {(r["method"], r["arm"]): r["note"] for r in section if r.get("note")}
    header = "| row | " + " | ".join(map(fraction_label, fractions)) + " |"
    lines = [
        header + (" note |" if notes else ""),
        "|---|" + "---|" * (len(fractions) + bool(notes)),
    ]
    for method, arm in rows:
        note = notes.get((method, arm))
        values = (["missing"] * len(fractions) if note
                  else [split_cell(cells.get((method, arm, f))) for f in fractions])  # fmt: skip
        end = f" {note or ''} |" if notes else ""
        lines.append(f"| {row_name(method, arm)} | " + " | ".join(values) + " |" + end)
    return lines


def _tally(comparisons: Sequence[Comparison]) -> str:
    counts = {k: sum(c.outcome == k for c in comparisons)
              for k in ("better", "worse", "unresolved", "no verdict", "missing")}  # fmt: skip
    return (f"CASS better in {counts['better']} of {len(comparisons)} comparisons, worse in "
            f"{counts['worse']}, no difference resolved in {counts['unresolved']}, no verdict "
            f"in {counts['no verdict'] + counts['missing']} (under two paired seeds, a "
            "missing row or a cell split by settings).")  # fmt: skip


def summary(comparisons: Sequence[Comparison], dataset: str, mode: str) -> list[str]:
    """A dataset's verdicts at a glance: comparisons x label fractions."""
    mine = [c for c in comparisons if (c.dataset, c.mode) == (dataset, mode)]
    fractions = sorted({c.label_fraction for c in mine})
    lines = [f"### {dataset} ({mode}): {metric_name(mine[0].metric)}", "", _tally(mine), "",
             "| comparison | " + " | ".join(map(fraction_label, fractions)) + " |",
             "|---|" + "---|" * len(fractions)]  # fmt: skip
    by_key = {(c.arm, c.other, c.label_fraction): c for c in mine}
    for arm, other in dict.fromkeys((c.arm, c.other) for c in mine):
        names = f"{row_name(mine[0].method, arm)} vs {row_name(other, arm)}"
        values = [by_key[(arm, other, f)].short() if (arm, other, f) in by_key else "-"
                  for f in fractions]  # fmt: skip
        lines.append(f"| {names} | " + " | ".join(values) + " |")
    return lines


def _figures(results: Sequence[dict[str, Any]], order_rows: Sequence[tuple[str, str]]) -> dict:
    """Per (dataset, mode, fraction): the per-class F1 bars and confusion panels of each row."""
    found: dict[tuple[str, str, float], dict[str, list]] = {}
    runs = main_runs(results)
    keys = {(str(r["dataset"]), str(r["mode"]), float(r["label_fraction"])) for r in runs}
    for dataset, mode, fraction in sorted(keys):
        at = [r for r in runs if (str(r["dataset"]), str(r["mode"]), float(r["label_fraction"]))
              == (dataset, mode, fraction)]  # fmt: skip
        classes_of(at)  # every row of one figure must name the same classes
        bars, panels = [], []
        for method, arm in order_rows:
            group = [r for r in at if (r["method"], str(r["arm"])) == (method, arm)]
            if len({settings_of(r) for r in group}) > 1:
                continue  # a split cell: its runs are never summed into one panel
            f1, confusion = per_class_f1(group), confusion_total(group)
            if f1:
                bars.append((row_name(method, arm), f1))
            if confusion:
                panels.append((row_name(method, arm), confusion))
        if bars or panels:
            found[(dataset, mode, fraction)] = {"per_class_f1": bars, "confusion": panels}
    return found


INTRO = (
    "Does CASS beat DINO and the plain ImageNet init after fine-tuning with 1%, 10% and 100% of "
    "the labels? Each table cell is the mean ± sample std (number of seeds) of the test metric "
    "of the best validation checkpoint. Each verdict compares CASS with one baseline seed for "
    "seed (a seed fine-tunes every method on the same labelled images): the mean of the paired "
    "differences CASS − baseline and its 95% confidence interval from Student's t with n − 1 "
    'degrees of freedom. "CASS better" or "CASS worse" is said only where that interval '
    "excludes zero; one paired seed gives no interval and no verdict. The intervals are "
    "separate 95% intervals: over many comparisons, about one in twenty excludes zero by chance "
    "alone, so read single verdicts with that in mind."
)


def study_markdown(
    rows: Sequence[dict[str, Any]],
    comparisons: Sequence[Comparison],
    costs: Sequence[dict[str, Any]],
    order_rows: Sequence[tuple[str, str]],
    figures: dict[tuple[str, str, float], dict[str, list]],
    title: str,
    plotted: bool,
    machines: Sequence[str] = (),
) -> str:
    """``study.md`` from the rows, the verdicts, the costs, the planned figure names and the
    ``## Machines`` lines (:func:`machines_markdown`)."""
    main = [r for r in rows if r["pretrain_batch_size"] is None and r["pretrain_epochs"] is None]
    tables = sections(main)
    lines = [f"# {title}", "", INTRO, "", "## Summary"]
    for dataset, mode in tables:
        if any((c.dataset, c.mode) == (dataset, mode) for c in comparisons):
            lines += ["", *summary(comparisons, dataset, mode)]
    if plotted:
        lines += ["", f"![metric against the labelled fraction]({FRACTIONS_FILE})"]
    for (dataset, mode), section in tables.items():
        split = "+".join(sorted({r["test_split"] for r in section if r["test_split"]}))
        key = section[0]["metric"]
        lines += ["", f"## {dataset} ({mode})", "",
                  f"Metric: {metric_name(key)} (`{metric_key(key)}`) on the {split} split.", "",
                  *paper_table(section, order_rows), "", "Verdicts:", ""]  # fmt: skip
        lines += [f"- {c.words()}" for c in comparisons if (c.dataset, c.mode) == (dataset, mode)]
        for fraction in sorted({r["label_fraction"] for r in section}):
            drawn = figures.get((dataset, mode, fraction), {})
            links = [
                f"[{label}]({figure_name(kind, dataset, mode, fraction)})"
                for kind, label in FIGURE_KINDS.items()
                if drawn.get(kind)
            ]
            if links:
                lines += ["", f"{fraction_label(fraction)} labels: " + ", ".join(links) + "."]
    lines += ["", *cost_markdown(costs)]
    if machines:
        lines += ["", *machines]
    robust = robustness_markdown(rows, lambda d, m, f: figure_name("robustness", d, m, f))
    if robust:
        lines += ["", *robust]
    return "\n".join(lines) + "\n"


def write_study_report(
    results: Sequence[dict[str, Any]],
    costs: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    missing: Sequence[dict[str, Any]] = (),
    metric: str | None = None,
    title: str = "CASS study report",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``study.md``, ``report.csv``, ``verdicts.csv`` and the PNGs into ``out_dir``.

    ``metric`` applies to every dataset; ``None`` takes :func:`default_metric` per dataset.
    ``notes`` (e.g. the study's points that did not finish) close ``study.md`` as a list, with
    the report's own: copies of a run counted once, datasets of one name told apart.
    Returns ``{file name: path}``. Refuses, before writing anything, when any of those files
    already exists (a report is a record of the runs it read). The files appear together or
    not at all: they are written into a hidden folder beside ``out_dir``, renamed at the end.
    """
    check_results(results)
    check_costs(costs)
    results, own_notes = prepare(results)
    notes = [*notes, *own_notes]
    order_rows = layout(results, missing)
    rows = table_rows(results, missing, metric)

    layouts = layouts_of(results)

    def metric_for(dataset: str) -> str:
        return metric or default_metric(dataset, layouts.get(dataset))

    present = {str(r["method"]) for r in results} | {str(m["method"]) for m in missing}
    comparisons = verdicts(results, metric_for, missing=missing, others=compared_methods(present))
    main = [r for r in rows if r["pretrain_batch_size"] is None and r["pretrain_epochs"] is None
            and r["mean"] is not None]  # fmt: skip
    figures = _figures(results, order_rows)
    robust = grids(rows)
    names = [STUDY_FILE, TABLE_FILE, VERDICTS_FILE] + ([FRACTIONS_FILE] if main else [])
    names += [figure_name(kind, *key) for key, drawn in figures.items() for kind in drawn
              if drawn[kind]]  # fmt: skip
    names += [figure_name("robustness", *key) for key in robust]
    out = Path(out_dir)
    paths = {name: out / name for name in names}
    refuse_existing(paths.values())

    text = study_markdown(rows, comparisons, costs, order_rows, figures, title, bool(main),
                          machines_markdown(results, costs))  # fmt: skip
    if notes:
        text += "\n## Notes\n\n" + "".join(f"- {note}\n" for note in notes)
    with StagedFolder(out) as staged:
        staged.write(TABLE_FILE, lambda p: write_csv(rows, p, STUDY_CSV_FIELDS))
        staged.write(VERDICTS_FILE, lambda p: write_csv(
            [c.as_row() for c in comparisons], p, VERDICT_FIELDS))  # fmt: skip
        if main:
            staged.write(FRACTIONS_FILE, lambda p: plot(main, metric or "f1_macro", p))
        for (dataset, mode, fraction), drawn in figures.items():
            where = f"{dataset} ({mode}), {fraction_label(fraction)} labels"
            if drawn["per_class_f1"]:
                name = figure_name("per_class_f1", dataset, mode, fraction)
                staged.write(name, lambda p, d=drawn, w=where: plot_per_class_f1(
                    d["per_class_f1"], f"{w}: per-class F1", p))  # fmt: skip
            if drawn["confusion"]:
                name = figure_name("confusion", dataset, mode, fraction)
                staged.write(name, lambda p, d=drawn, w=where: plot_confusions(
                    d["confusion"], f"{w}: confusion (counts over seeds)", p))  # fmt: skip
        for (dataset, mode, fraction), grid in robust.items():
            where = f"{dataset} ({mode}), {fraction_label(fraction)} labels"
            name = figure_name("robustness", dataset, mode, fraction)
            title_ = f"{where}: {metric_name(metric_for(dataset))}"
            staged.write(name, lambda p, g=grid, t=title_: plot_robustness(heatmaps(g), t, p))
        staged.write(STUDY_FILE, lambda p: p.write_text(text))
    return paths
