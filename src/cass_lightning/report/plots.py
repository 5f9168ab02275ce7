"""Every figure of a report, drawn with matplotlib's Agg backend (imported inside each function).

Importing this module costs nothing: matplotlib loads only when a figure is drawn, so the tables
stay available on machines without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cass_lightning.report.table import fraction_label, metric_key, pretrain_tag, sections


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: files only, no display on cluster nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> None:
    """The metric against the label fraction (log x), one line with error bars per method+arm.

    One panel per (dataset, mode); each panel's y label is the metric its rows hold (a study
    may use a different metric per dataset), ``metric`` where rows do not say.
    """
    plt = _pyplot()
    panels = sections(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    try:
        for ax, ((dataset, mode), section) in zip(axes[0], panels.items()):
            for line in dict.fromkeys((r["method"], r["arm"], pretrain_tag(r)) for r in section):
                points = [r for r in section if (r["method"], r["arm"], pretrain_tag(r)) == line
                          and r["mean"] is not None]  # fmt: skip
                if not points:
                    continue
                ax.errorbar([r["label_fraction"] for r in points], [r["mean"] for r in points],
                            yerr=[r["std"] for r in points], marker="o", capsize=3,
                            label=f"{line[0]} {line[1]}{line[2]}")  # fmt: skip
            fractions = sorted({r["label_fraction"] for r in section})
            ax.set_xscale("log")
            ax.set_xticks(fractions, [fraction_label(f) for f in fractions])
            ax.minorticks_off()
            ax.set(title=f"{dataset} ({mode})", xlabel="labelled fraction of the training split",
                   ylabel=" + ".join(sorted({r.get("metric") or metric_key(metric)
                                            for r in section})))  # fmt: skip
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def plot_per_class_f1(bars: Sequence[tuple[str, dict[str, Any]]], title: str, path: Path) -> None:
    """Grouped bars: F1 per class (x), one bar per table row; support under each class name.

    ``bars`` holds ``(row name, per_class_f1(...) result)``; a class a row never scored has no
    bar rather than a zero one.
    """
    plt = _pyplot()
    classes = bars[0][1]["classes"]
    support = next((b["support"] for _, b in bars if b.get("support")), None)
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(classes) * max(1, len(bars) / 3)), 4))
    try:
        for k, (name, data) in enumerate(bars):
            xs = [i + (k - (len(bars) - 1) / 2) * width for i, v in enumerate(data["f1"])
                  if v is not None]  # fmt: skip
            ys = [v for v in data["f1"] if v is not None]
            ax.bar(xs, ys, width=width, label=f"{name} (n={data['n']})")
        labels = [f"{c}\n({s})" for c, s in zip(classes, support)] if support else classes
        ax.set_xticks(range(len(classes)), labels, fontsize=8)
        ax.set(title=title, ylabel="F1 (mean over seeds)", ylim=(0, 1.05),
               xlabel="class (test support)" if support else "class")  # fmt: skip
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_confusions(panels: Sequence[tuple[str, dict[str, Any]]], title: str, path: Path) -> None:
    """One confusion matrix per table row (counts summed over seeds), coloured by row-normalised
    recall, counts written in the cells when there are at most 12 classes."""
    plt = _pyplot()
    columns = min(4, len(panels))
    lines = (len(panels) + columns - 1) // columns
    size = len(panels[0][1]["classes"])
    side = max(3.2, 0.45 * size + 1.5)
    fig, axes = plt.subplots(lines, columns, figsize=(side * columns, side * lines + 0.5),
                             squeeze=False, layout="constrained")  # fmt: skip
    try:
        for ax in axes.flat[len(panels) :]:
            ax.axis("off")
        for ax, (name, data) in zip(axes.flat, panels):
            matrix, classes = data["matrix"], data["classes"]
            recall = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in matrix]
            ax.imshow(recall, vmin=0, vmax=1, cmap="Blues")
            if len(classes) <= 12:
                for i, row in enumerate(matrix):
                    for j, count in enumerate(row):
                        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                                color="white" if recall[i][j] > 0.6 else "black")  # fmt: skip
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(len(classes)), classes, fontsize=7)
            ax.set(title=f"{name} (n={data['n']})", xlabel="predicted", ylabel="true")
        fig.suptitle(title)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_robustness(
    panels: Sequence[tuple[str, Sequence[tuple[str, list, list, list[list]]]]],
    title: str,
    path: Path,
) -> None:
    """Heatmaps of the metric over batch size (y) x pretraining epochs (x): one line of panels
    per arm, CASS and DINO side by side on one colour scale; blank cells were not run."""
    plt = _pyplot()
    values = [v for _, line in panels for *_, grid in line for row in grid for v in row
              if v is not None]  # fmt: skip
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.01, high + 0.01
    columns = max(len(line) for _, line in panels)
    fig, axes = plt.subplots(len(panels), columns, figsize=(4.2 * columns, 3.4 * len(panels)),
                             squeeze=False, layout="constrained")  # fmt: skip
    try:
        image = None
        for axes_line, (_, line) in zip(axes, panels):
            for ax, (name, batches, epochs, grid) in zip(axes_line, line):
                masked = [[float("nan") if v is None else v for v in row] for row in grid]
                image = ax.imshow(masked, vmin=low, vmax=high, cmap="viridis", aspect="auto")
                for i, row in enumerate(grid):
                    for j, v in enumerate(row):
                        light = v is None or (v - low) / (high - low) > 0.6
                        color = "black" if light else "white"
                        text = "-" if v is None else f"{v:.3f}"
                        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
                ax.set_xticks(range(len(epochs)), ["-" if e is None else str(e) for e in epochs])
                ax.set_yticks(range(len(batches)), ["-" if b is None else str(b) for b in batches])
                ax.set(title=name, xlabel="pretraining epochs", ylabel="batch size")
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
        fig.suptitle(title)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
