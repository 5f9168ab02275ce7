"""Finding ``results.json`` files and naming the pretraining method behind each run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cass_lightning.io import read_json
from cass_lightning.modules.registry import get_method, method_names, name_of, recorded_method
from cass_lightning.report.validate import load_result
from cass_lightning.walk import walk_files

RESULTS_FILE = "results.json"  # what cass-finetune writes (apps/finetune.py)
META_FILE = "meta.json"  # what an export holds (export.py)
#: The shipped methods in table order (CASS first, then its baselines); the registry
#: (``cass_lightning.modules.registry``) is the list, including methods registered later.
METHODS = method_names()
ARMS = ("cnn", "vit")


def method_of(result: dict[str, Any], source: Path | None = None) -> str:
    """The registry name of the pretraining method behind one run.

    ``results.json`` records it (``method``; a display label in older files is mapped to its
    name by the registry), so the exports the runs fine-tuned may since have moved or gone.
    Only a ``results.json`` written before it recorded the method is named from its ``init`` and,
    for an export, that export's ``meta.json`` (:func:`recorded_method`). A method the registry
    does not know is refused by name, never reported as another.
    """
    where = f" ({source})" if source else ""
    recorded = result.get("method")
    if recorded is not None:
        try:
            return name_of(str(recorded))
        except ValueError as err:
            raise ValueError(f"{err} (the run{where})") from None
    return _method_from_init(result, where)


def _method_from_init(result: dict[str, Any], where: str) -> str:
    """The method of a ``results.json`` that records none: its ``init``, or the export's
    ``meta.json`` (a ``.ckpt`` is always a CASS checkpoint: ``cass-finetune`` reads no other)."""
    init = result.get("init")
    if init in method_names() and not get_method(str(init)).pretrains:
        return str(init)
    if init == "checkpoint":
        return "cass"
    if init == "export":
        weights = result.get("weights")
        meta_path = Path(str(weights)) / META_FILE
        if not weights or not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: the run{where} was fine-tuned from that export, whose "
                "meta.json names the pretraining method (its results.json, from an earlier "
                "version, does not). Put the export back at that path"
            )
        try:  # plain JSON, bounded in size and depth
            meta = read_json(meta_path, "export meta.json")
        except ValueError as err:
            raise ValueError(f"{err}: the run{where}") from None
        method = meta.get("method", "cass") if isinstance(meta, dict) else None
        if not isinstance(method, str):
            raise ValueError(f"{meta_path} names no method (the run{where})")
        try:
            return recorded_method(meta)
        except ValueError as err:
            raise ValueError(f"{meta_path}: {err} (the run{where})") from None
    raise ValueError(f"unknown init {init!r} in a results file{where}")


def collect_results(folders: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` under ``folders`` (searched recursively), each with its method.

    Each returned dict is the file's content plus ``method`` and ``results_file``. Linked
    folders are followed (each real folder once: a link loop ends there). A file found through
    two overlapping folders (or two links) counts once, so no run is averaged in twice (copies
    of a run in other folders are collapsed by the report: :mod:`.identity`). A file that is not a
    results.json the report can trust is refused by name (:func:`.validate.load_result`).
    """
    roots = [Path(f) for f in folders]
    if not roots:
        raise ValueError("name at least one folder of fine-tuning runs")
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise FileNotFoundError(f"not a folder: {', '.join(missing)}")
    files = sorted({p.resolve() for r in roots  # run folders reached through links included
                    for p in walk_files(r, lambda name: name == RESULTS_FILE).files})  # fmt: skip
    if not files:
        raise FileNotFoundError(
            f"no {RESULTS_FILE} found under {', '.join(str(r) for r in roots)}: point at the "
            "folders of cass-finetune runs (each run writes one)"
        )
    results = []
    for file in files:
        result = load_result(file)
        result["method"] = method_of(result, file)
        result["results_file"] = str(file)
        result.setdefault("pretrain_budget", pretrain_budget(result))
        results.append(result)
    return results


def pretrain_budget(result: dict[str, Any]) -> dict[str, int] | None:
    """The epochs and batch size of the pretraining a run fine-tuned (from ``summary.json``
    of the run its export lies in), or ``None`` when it is not a pretraining export or the
    summary is gone or holds no whole numbers there."""
    if result.get("init") != "export" or not result.get("weights"):
        return None
    summary = Path(str(result["weights"])).parent / "summary.json"
    try:
        found = read_json(summary, "summary.json")
    except (OSError, ValueError):  # gone, or not a record: no budget to compare
        return None
    if not isinstance(found, dict):
        return None
    budget = {k: found.get(k) for k in ("epochs", "batch_size")}
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in budget.values())
    return budget if ok else None


def missing_reason(
    missing: Sequence[dict[str, Any]], method: str, arm: str, dataset: str | None = None
) -> str | None:
    """Why the study has no runs for ``method`` on ``arm`` (and ``dataset``), or ``None``.

    ``missing`` holds ``{"method", "arm", "reason"}`` entries from the caller (``cass-study``);
    an entry without ``dataset`` applies to every dataset. Reasons of several matching entries
    are joined with ``; ``.
    """
    reasons = [
        str(m["reason"])
        for m in missing
        if m.get("method") == method
        and m.get("arm") == arm
        and (dataset is None or m.get("dataset") in (None, dataset))
    ]
    return "; ".join(dict.fromkeys(reasons)) or None
