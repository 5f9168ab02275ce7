"""The paper's downstream table from fine-tuning runs: collect ``results.json``, aggregate, write.

Framework-free on purpose (no torch, Lightning or Hydra): a report is made on any machine that
holds the run folders, long after the runs, and must not need the training stack to import.

Every ``cass-finetune`` run writes one ``results.json``; :func:`collect_results` finds them under
any number of folders and labels each run with its pretraining *method* (``cass``, ``dino``,
``imagenet`` for the supervised baseline, ``random``). :func:`aggregate` averages one metric over
seeds for each (dataset, method, arm, mode, label fraction), and :func:`write_report` writes
``report.csv``, ``report.md`` (rows method x arm, columns label fractions, as in the paper) and
``report.png`` (the metric against the label fraction).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"  # what cass-finetune writes (apps/finetune.py)
META_FILE = "meta.json"  # what an export holds (export.py)
REPORT_FILES = ("report.csv", "report.md", "report.png")
METHODS = ("cass", "dino", "imagenet", "random")  # table order: CASS first, then its baselines
ARMS = ("cnn", "vit")
REQUIRED_KEYS = ("init", "arm", "mode", "dataset", "label_fraction", "metrics")
CSV_FIELDS = (
    "dataset", "method", "arm", "mode", "label_fraction", "metric", "mean", "std", "n",
    "n_missing", "seeds", "test_split",
)  # fmt: skip


def method_label(result: dict[str, Any], source: Path | None = None) -> str:
    """The pretraining method behind one run, from its ``init`` and, for exports, ``meta.json``.

    An export says which method wrote it (DINO's exports carry ``"method": "dino"``; CASS's
    exports predate that key, so a missing key means CASS). A ``.ckpt`` is always a CASS
    checkpoint: ``cass-finetune`` reads no other kind.
    """
    init = result.get("init")
    where = f" ({source})" if source else ""
    if init in ("imagenet", "random"):
        return str(init)
    if init == "checkpoint":
        return "cass"
    if init == "export":
        weights = result.get("weights")
        meta_path = Path(str(weights)) / META_FILE
        if not weights or not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: the run{where} was fine-tuned from that export, whose "
                "meta.json names the pretraining method. Put the export back at that path"
            )
        method = json.loads(meta_path.read_text()).get("method", "cass")
        return "dino" if str(method).lower() == "dino" else "cass"
    raise ValueError(f"unknown init {init!r} in a results file{where}")


def collect_results(folders: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``folders`` (searched recursively), each with its method.

    Each returned dict is the file's content plus ``method`` and ``results_file``. A file found
    through two overlapping folders counts once, so no run is averaged in twice.
    """
    roots = [Path(f) for f in folders]
    if not roots:
        raise ValueError("name at least one folder of fine-tuning runs")
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise FileNotFoundError(f"not a folder: {', '.join(missing)}")
    files = sorted({p.resolve() for r in roots for p in r.rglob(RESULTS_FILE) if p.is_file()})
    if not files:
        raise FileNotFoundError(
            f"no {RESULTS_FILE} found under {', '.join(str(r) for r in roots)}: point at the "
            "folders of cass-finetune runs (each run writes one)"
        )
    results = []
    for file in files:
        try:
            result = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{file} is not valid JSON: {err}") from err
        absent = [k for k in REQUIRED_KEYS if k not in result]
        if absent:
            raise ValueError(f"{file} lacks {', '.join(absent)}: not a cass-finetune results.json")
        result["method"] = method_label(result, file)
        result["results_file"] = str(file)
        results.append(result)
    return results


def metric_key(metric: str) -> str:
    """``f1_macro`` and ``test/f1_macro`` both name the test-split metric results.json holds."""
    return metric if "/" in metric else f"test/{metric}"


def _order(value: str, known: Sequence[str]) -> tuple[int, str]:
    """Sort key: the paper's order for known names, then anything else alphabetically."""
    return (known.index(value), value) if value in known else (len(known), value)


def aggregate(results: Sequence[dict[str, Any]], metric: str = "f1_macro") -> list[dict[str, Any]]:
    """One row per (dataset, method, arm, mode, label_fraction): mean, sample std and n over seeds.

    A run whose metric is ``None`` (non-finite: results.json has no NaN) counts in ``n_missing``
    rather than silently lowering or raising the mean. A run that does not hold the metric at
    all is an error naming the file, so a typo in ``metric`` never yields an empty table.
    """
    key = metric_key(metric)
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
            str(result.get("mode")), float(result["label_fraction"]),
        )  # fmt: skip
        groups.setdefault(group, []).append(result)
    rows = []
    for (dataset, method, arm, mode, fraction), runs in groups.items():
        values = [float(r["metrics"][key]) for r in runs if r["metrics"][key] is not None]
        values = [v for v in values if math.isfinite(v)]
        mean = statistics.fmean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        rows.append({
            "dataset": dataset, "method": method, "arm": arm, "mode": mode,
            "label_fraction": fraction, "metric": key, "mean": mean, "std": std,
            "n": len(values), "n_missing": len(runs) - len(values),
            "seeds": " ".join(str(s) for s in sorted(str(r.get("seed")) for r in runs)),
            "test_split": "+".join(sorted({str(r.get("test_split")) for r in runs})),
        })  # fmt: skip
    rows.sort(key=lambda r: (r["dataset"], r["mode"], _order(r["method"], METHODS),
                             _order(r["arm"], ARMS), r["label_fraction"]))  # fmt: skip
    return rows


def fraction_label(fraction: float) -> str:
    """0.01 -> ``1%``: the paper names label fractions in percent."""
    return f"{fraction * 100:g}%"


def cell(row: dict[str, Any] | None) -> str:
    """``mean ± std (n)`` with four decimals; ``-`` where no run of that cell has a value."""
    if row is None or row["mean"] is None:
        return "-" if row is None else f"- ({row['n_missing']} without a value)"
    return f"{row['mean']:.4f} ± {row['std']:.4f} ({row['n']})"


def _sections(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The rows of each (dataset, mode): one table and one plot panel each."""
    sections: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        sections.setdefault((row["dataset"], row["mode"]), []).append(row)
    return sections


def markdown(rows: Sequence[dict[str, Any]], metric: str) -> str:
    """The paper's layout: a table per dataset (and mode), rows method x arm, columns fractions."""
    key = metric_key(metric)
    lines = [f"# Downstream results: {key}", "",
             "mean ± sample std (number of seeds) of the best validation checkpoint on the "
             "evaluation split."]  # fmt: skip
    for (dataset, mode), section in _sections(rows).items():
        fractions = sorted({r["label_fraction"] for r in section})
        splits = "+".join(sorted({s for r in section for s in r["test_split"].split("+")}))
        lines += ["", f"## {dataset} ({mode}, evaluated on the {splits} split)", ""]
        lines.append("| method | arm | " + " | ".join(map(fraction_label, fractions)) + " |")
        lines.append("|---|---|" + "---|" * len(fractions))
        cells = {(r["method"], r["arm"], r["label_fraction"]): r for r in section}
        for method, arm in dict.fromkeys((r["method"], r["arm"]) for r in section):
            values = [cell(cells.get((method, arm, f))) for f in fractions]
            lines.append(f"| {method} | {arm} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> None:
    """The metric against the label fraction (log x), one line with error bars per method+arm."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    sections = _sections(rows)
    fig, axes = plt.subplots(1, len(sections), figsize=(5 * len(sections), 4), squeeze=False)
    try:
        for ax, ((dataset, mode), section) in zip(axes[0], sections.items()):
            for method, arm in dict.fromkeys((r["method"], r["arm"]) for r in section):
                points = [r for r in section if (r["method"], r["arm"]) == (method, arm)
                          and r["mean"] is not None]  # fmt: skip
                if not points:
                    continue
                ax.errorbar([r["label_fraction"] for r in points], [r["mean"] for r in points],
                            yerr=[r["std"] for r in points], marker="o", capsize=3,
                            label=f"{method} {arm}")  # fmt: skip
            fractions = sorted({r["label_fraction"] for r in section})
            ax.set_xscale("log")
            ax.set_xticks(fractions, [fraction_label(f) for f in fractions])
            ax.minorticks_off()
            ax.set(title=f"{dataset} ({mode})", xlabel="labelled fraction of the training split",
                   ylabel=metric_key(metric))  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, metric: str = "f1_macro"
) -> dict[str, Path]:
    """Write ``report.csv``, ``report.md`` and ``report.png`` into ``out_dir``; return their paths.

    Refuses (before writing anything) when ``out_dir`` already holds any of them: a report is a
    record of the runs it read, and a second report must not silently replace the first.
    """
    if not rows:
        raise ValueError("no rows to report")
    out = Path(out_dir)
    paths = {name.split(".")[1]: out / name for name in REPORT_FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; refusing to overwrite a report. "
            "Choose another output folder (--out)"
        )
    out.mkdir(parents=True, exist_ok=True)
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    paths["md"].write_text(markdown(rows, metric))
    plot(rows, metric, paths["png"])
    return paths
