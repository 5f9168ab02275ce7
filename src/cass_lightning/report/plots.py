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
