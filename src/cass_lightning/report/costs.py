"""Pretraining cost per method, and CASS's wall time as a fraction of DINO's (the paper's 69%).

A cost entry is what ``cass-study`` measured for one pretraining run::

    {"method": "cass"|"dino", "arm": "both"|"cnn"|"vit", "fit_seconds": float,
     "images_per_s": float|None, "peak_memory_gib": float|None,
     "memory_kind": "gpu"|"cpu_rss"|"cpu_rss_process", "epochs": int, "batch_size": int,
     "steps": int, "dataset": str, "cost_comparable": bool (absent: true),
     "device": str (what it ran on, e.g. "NVIDIA H100 80GB HBM3 x1 (79.2 GiB)"; absent: unknown)}

A run whose cost is not known in full (``cost_comparable: false`` in its summary: a start of it
was killed without recording its end) gets a row of its own marked "interrupted: cost not
comparable" and is left out of every time ratio.

CASS trains both arms in one run; DINO trains one arm per run, so CASS is compared with DINO-CNN
plus DINO-ViT (what it replaces) and with each alone. Runs are compared only on the same dataset
and number of epochs, at the same batch size where DINO ran one, and only on the same device: a
time ratio between runs on different devices would measure the devices, so the report says so
instead of giving one.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from cass_lightning.report.collect import ARMS
from cass_lightning.report.table import ARM_NAMES, method_name, methods_order, order

COST_REQUIRED = ("method", "arm", "fit_seconds", "epochs", "batch_size", "dataset")
NOT_COMPARABLE = "interrupted: cost not comparable"
UNKNOWN_DEVICE = "unknown device"


def device_of(cost: dict[str, Any]) -> str:
    """The device a cost was measured on (older summaries recorded none)."""
    return str(cost.get("device") or UNKNOWN_DEVICE)


def comparable(cost: dict[str, Any]) -> bool:
    """Whether the entry's wall time covers the whole run (``cost_comparable`` absent: yes)."""
    return cost.get("cost_comparable") is not False


MEMORY_KINDS = {"gpu": "GPU", "cpu_rss": "CPU RSS", "cpu_rss_process": "CPU RSS of the process"}


def check_costs(costs: Sequence[dict[str, Any]]) -> None:
    """Raise naming the entry and the key when a cost entry lacks what the report reads."""
    for i, cost in enumerate(costs):
        absent = [k for k in COST_REQUIRED if cost.get(k) is None]
        if absent:
            raise ValueError(f"pretraining cost entry {i} ({cost}) lacks {', '.join(absent)}")
        if comparable(cost) and float(cost["fit_seconds"]) <= 0:
            raise ValueError(f"pretraining cost entry {i}: fit_seconds must be > 0, not "
                             f"{cost['fit_seconds']}")  # fmt: skip


def duration(seconds: float) -> str:
    """``7 h 11 min``, ``4 min 12 s`` or ``12.3 s``: wall time as a person reads it."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    if seconds < 3570:  # under an hour once rounded to the minute
        whole = round(seconds)
        return f"{whole // 60} min {whole % 60} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min"


def times(ratio: float) -> str:
    """``0.31x (69% less time)`` / ``1.20x (20% more time)``."""
    change = round(abs(1 - ratio) * 100)
    return f"{ratio:.2f}x ({change}% {'less' if ratio < 1 else 'more'} time)"


def _name(method: str, arm: str) -> str:
    if arm == "both":
        return f"{method_name(method)} (both arms)"
    return f"{method_name(method)}-{ARM_NAMES.get(arm, arm)}"


def cost_rows(costs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method, arm, epochs, batch size): means over repeated runs.

    ``fit_seconds``, ``images_per_s`` and ``steps`` are means, ``peak_memory_gib`` the maximum;
    ``n`` counts the runs. Runs whose cost is not comparable are grouped apart
    (``comparable: False``), never averaged with whole ones.
    """
    check_costs(costs)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cost in costs:
        key = (str(cost["dataset"]), str(cost["method"]), str(cost["arm"]), int(cost["epochs"]),
               int(cost["batch_size"]), comparable(cost), device_of(cost))  # fmt: skip
        groups.setdefault(key, []).append(cost)
    rows = []
    for (dataset, method, arm, epochs, batch, whole, device), runs in groups.items():
        speeds = [float(r["images_per_s"]) for r in runs if r.get("images_per_s") is not None]
        memory = [float(r["peak_memory_gib"]) for r in runs if r.get("peak_memory_gib") is not None]
        steps = [int(r["steps"]) for r in runs if r.get("steps") is not None]
        rows.append({
            "dataset": dataset, "method": method, "arm": arm, "epochs": epochs,
            "batch_size": batch, "n": len(runs),
            "fit_seconds": statistics.fmean(float(r["fit_seconds"]) for r in runs),
            "images_per_s": statistics.fmean(speeds) if speeds else None,
            "peak_memory_gib": max(memory) if memory else None,
            "memory_kind": "+".join(sorted({str(r.get("memory_kind")) for r in runs
                                            if r.get("peak_memory_gib") is not None})),
            "steps": round(statistics.fmean(steps)) if steps else None,
            "comparable": whole, "device": device,
        })  # fmt: skip
    arms = ("both", *ARMS)
    known = methods_order()
    rows.sort(key=lambda r: (r["dataset"], order(r["method"], known), order(r["arm"], arms),
                             r["epochs"], r["batch_size"], not r["comparable"],
                             r["device"]))  # fmt: skip
    return rows


def _dino(rows: Sequence[dict[str, Any]], cass: dict[str, Any], arm: str) -> dict[str, Any] | None:
    """DINO on ``arm`` for the same dataset and epochs as ``cass``: same batch size if run, else
    the only batch size DINO ran at those epochs; ``None`` when there is none or no single one."""
    same = [r for r in rows if (r["method"], r["arm"], r["dataset"], r["epochs"], r["device"])
            == ("dino", arm, cass["dataset"], cass["epochs"], cass["device"])]  # fmt: skip
    exact = [r for r in same if r["batch_size"] == cass["batch_size"]]
    return exact[0] if exact else (same[0] if len(same) == 1 else None)


def device_mismatches(costs: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per CASS setting whose DINO runs were measured only on other devices:
    no ratio is computed for them."""
    rows = [r for r in cost_rows(costs) if r["comparable"]]
    notes = []
    for cass in (r for r in rows if r["method"] == "cass"):
        for arm in ARMS:
            dino = ("dino", arm, cass["dataset"], cass["epochs"])
            same = [r for r in rows if (r["method"], r["arm"], r["dataset"], r["epochs"]) == dino]
            others = sorted({r["device"] for r in same})
            if others and _dino(rows, cass, arm) is None and cass["device"] not in others:
                notes.append(
                    f"{cass['dataset']}, {cass['epochs']} epochs: CASS ran on {cass['device']}, "
                    f"{_name('dino', arm)} on {' / '.join(others)}: different devices, so no "
                    "time ratio is computed (it would compare the devices, not the methods)."
                )
    return notes


def ratios(costs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """CASS's wall time over DINO's, per CASS run setting (dataset, epochs, batch size).

    ``vs_both`` divides by DINO-CNN + DINO-ViT (only when both ran), ``vs_cnn`` and ``vs_vit``
    by each alone; ``None`` where that DINO run is absent. Runs whose cost is not comparable
    take no part.
    """
    rows = [r for r in cost_rows(costs) if r["comparable"]]
    found = []
    for cass in (r for r in rows if r["method"] == "cass"):
        cnn, vit = _dino(rows, cass, "cnn"), _dino(rows, cass, "vit")
        if cnn is None and vit is None:
            continue
        seconds = cass["fit_seconds"]
        found.append({
            "dataset": cass["dataset"], "arm": cass["arm"], "epochs": cass["epochs"],
            "device": cass["device"],
            "batch_size": cass["batch_size"], "cass_seconds": seconds,
            "dino_cnn_seconds": cnn["fit_seconds"] if cnn else None,
            "dino_vit_seconds": vit["fit_seconds"] if vit else None,
            "dino_batch_sizes": sorted({r["batch_size"] for r in (cnn, vit) if r}),
            "vs_both": seconds / (cnn["fit_seconds"] + vit["fit_seconds"]) if cnn and vit
            else None,
            "vs_cnn": seconds / cnn["fit_seconds"] if cnn else None,
            "vs_vit": seconds / vit["fit_seconds"] if vit else None,
        })  # fmt: skip
    return found


def machines_markdown(
    results: Sequence[dict[str, Any]], costs: Sequence[dict[str, Any]]
) -> list[str]:
    """The ``## Machines`` section: each device the study's figures came from, with the
    pretraining runs measured on it and the number of fine-tuning runs."""
    pretrained: dict[str, set[str]] = {}
    for cost in costs:
        pretrained.setdefault(device_of(cost), set()).add(_name(cost["method"], cost["arm"]))
    tuned: dict[str, int] = {}
    for result in results:
        machine = result.get("machine") or {}
        device = str(machine.get("device") or UNKNOWN_DEVICE)
        tuned[device] = tuned.get(device, 0) + 1
    lines = ["## Machines", "", "Where this report's figures were measured (the cost table "
             "repeats each run's device):", ""]  # fmt: skip
    for device in sorted(set(pretrained) | set(tuned)):
        parts = []
        if device in pretrained:
            parts.append("pretraining of " + ", ".join(sorted(pretrained[device])))
        if device in tuned:
            parts.append(f"{tuned[device]} fine-tuning run(s)")
        lines.append(f"- **{device}**: {'; '.join(parts)}")
    return lines


def _or_dash(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def cost_markdown(costs: Sequence[dict[str, Any]]) -> list[str]:
    """The pretraining cost section of ``study.md`` (lines, no trailing blank)."""
    lines = ["## Pretraining cost", ""]
    if not costs:
        return [*lines, "No pretraining costs were given: nothing to compare."]
    lines += [
        "Wall time of each pretraining fit, throughput and peak memory, as measured by the study "
        "on the device named beside it (means over repeated runs; `n` counts them).", "",
        "| dataset | method | epochs | batch | steps | wall time | images/s | peak memory | "
        "device | n |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]  # fmt: skip
    for r in cost_rows(costs):
        memory = (f"{r['peak_memory_gib']:.2f} GiB "
                  f"({MEMORY_KINDS.get(r['memory_kind'], r['memory_kind'])})"
                  if r["peak_memory_gib"] is not None else "-")  # fmt: skip
        wall = duration(r["fit_seconds"]) if r["comparable"] else NOT_COMPARABLE
        lines.append(
            f"| {r['dataset']} | {_name(r['method'], r['arm'])} | {r['epochs']} | "
            f"{r['batch_size']} | {_or_dash(r['steps'])} | {wall} | "
            f"{_or_dash(r['images_per_s'], '{:.1f}')} | {memory} | {r['device']} | {r['n']} |"
        )
    found = ratios(costs)
    mismatched = device_mismatches(costs)
    lines.append("")
    if mismatched:
        lines += [*mismatched, ""]
    if not found:
        return [*lines, "No CASS and DINO pretraining on the same dataset, epochs and device: "
                "no ratio."]  # fmt: skip
    lines += [
        "CASS's wall time as a fraction of DINO's (same dataset, epochs and device; the paper: "
        "CASS needs 69% less time than DINO):", "",
        "| dataset | epochs | device | batch (CASS / DINO) | CASS / (DINO-CNN + DINO-ViT) | "
        "CASS / DINO-CNN | CASS / DINO-ViT |",
        "|---|---:|---|---|---|---|---|",
    ]  # fmt: skip
    for r in found:
        dino_batches = "/".join(map(str, r["dino_batch_sizes"]))
        lines.append(
            f"| {r['dataset']} | {r['epochs']} | {r['device']} | {r['batch_size']} / "
            f"{dino_batches} | "
            + " | ".join(_or_dash(r[k] and times(r[k])) for k in ("vs_both", "vs_cnn", "vs_vit"))
            + " |"
        )
    settings: dict[tuple[int, int, str], list[float]] = {}
    for r in found:
        if r["vs_both"] is not None:
            settings.setdefault((r["epochs"], r["batch_size"], r["device"]), []).append(
                r["vs_both"])  # fmt: skip
    for (epochs, batch, device), values in settings.items():
        if len(values) > 1:
            mean = times(statistics.fmean(values))
            lines += ["", f"Mean over {len(values)} datasets ({epochs} epochs, CASS batch "
                      f"{batch}, {device}): CASS / (DINO-CNN + DINO-ViT) = {mean}."]  # fmt: skip
    return lines
