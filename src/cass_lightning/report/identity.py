"""Which results are the same run, and which may share a table cell.

A report averages seeds of one setting on one dataset, and nothing else:

- **a run counts once**: copies of a run folder (same ``run_id``, written when the run started;
  runs from before run ids by the digest of their ``results.json``) collapse to one;
- **settings**: the fine-tuning run's settings digest (:func:`settings_digest` of its composed
  config without the seed, paths and loggers), recorded in ``results.json`` by
  ``cass-finetune``; for older runs, from ``.hydra/config.yaml`` beside ``results.json``, else
  from what ``results.json`` itself says (method, arm, mode, encoder, image size, the weights'
  sha256, ...);
- **data**: the dataset fingerprint (:mod:`cass_lightning.data.fingerprint`) in
  ``results.json``, else the dataset's name and number of classes.

Runs that would share a cell with different settings or data get rows of their own.
Framework-free (no torch, no Hydra): YAML is read with PyYAML only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cass_lightning.io import RecordError, read_yaml

#: Config keys (dotted) that never change what a fine-tuning run measures: its seed (runs of
#: one cell differ in it), where things are written or read from (the weights and data are
#: recorded by content), how progress is logged and how many loader processes read the data.
IGNORED_SETTINGS = (
    "seed", "data.label_seed", "paths", "hydra", "logger", "callbacks", "print_config",
    "task_name", "run_dir", "output_dir", "data.root", "data.output_dir", "data.cache_dir",
    "data.num_workers", "data.persistent_workers", "data.pin_memory", "weights",
    "model.weights_file", "resume", "resume_trust", "trainer.enable_progress_bar",
    "trainer.default_root_dir", "trainer.log_every_n_steps", "extras", "rich_progress_bar",
)  # fmt: skip
#: What ``results.json`` itself says about the settings, for runs without a recorded digest.
RESULT_SETTINGS = (
    "init", "method", "arm", "mode", "timm_name", "img_size", "label_fraction", "test_split",
    "multi_label", "monitor", "pretrain",
)  # fmt: skip
CONFIG_FILE = Path(".hydra") / "config.yaml"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _drop(config: Any, prefix: str = "") -> Any:
    if not isinstance(config, dict):
        return config
    return {
        k: _drop(v, f"{prefix}{k}.")
        for k, v in config.items()
        if f"{prefix}{k}" not in IGNORED_SETTINGS
    }


def settings_digest(config: dict[str, Any], weights: Sequence[str] = ()) -> str:
    """SHA-256 of a run's resolved config without :data:`IGNORED_SETTINGS`, plus the sha256 of
    every weights file the run loaded (``weights``): the same value for every seed of one
    setting, a different one when anything that matters differs."""
    return _digest({"config": _drop(config), "weights": sorted(weights)})


def weights_hashes(result: dict[str, Any]) -> list[str]:
    """Every ``sha256`` recorded in a result's ``weights_loaded`` (the backbone's file(s))."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "sha256" and isinstance(v, str):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(result.get("weights_loaded"))
    return sorted(found)


def _config_beside(result: dict[str, Any]) -> dict[str, Any] | None:
    file = result.get("results_file")
    if not file:
        return None
    path = Path(str(file)).parent / CONFIG_FILE
    if not path.is_file():
        return None
    try:  # plain YAML, bounded in size and depth: nothing in it is resolved
        config = read_yaml(path, "saved config.yaml")
    except (OSError, RecordError):  # unreadable: fall back to results.json's own keys
        return None
    return config if isinstance(config, dict) else None


def settings_of(result: dict[str, Any]) -> str:
    """The run's settings digest: recorded, or from its saved config, or from results.json."""
    recorded = result.get("settings_digest")
    if isinstance(recorded, str) and recorded:
        return recorded
    if "_settings_of" not in result:  # older runs: the saved config is read once per result
        config = _config_beside(result)
        if config is not None:
            result["_settings_of"] = settings_digest(config, weights_hashes(result))
        else:
            own = {k: result.get(k) for k in RESULT_SETTINGS}
            result["_settings_of"] = _digest({"result": own, "weights": weights_hashes(result)})
    return str(result["_settings_of"])


def data_of(result: dict[str, Any]) -> str:
    """The dataset fingerprint's sha256, or for older runs a digest of the dataset's name and
    number of classes (what every results.json says about the data)."""
    fingerprint = result.get("data_fingerprint")
    if isinstance(fingerprint, dict) and isinstance(fingerprint.get("sha256"), str):
        return str(fingerprint["sha256"])
    return _digest({k: result.get(k) for k in ("dataset", "num_classes")})


def run_key(result: dict[str, Any]) -> str:
    """The run id written when the run started, or the digest of the results file's content
    (for runs from before run ids: a byte-for-byte copy then collapses too)."""
    run_id = result.get("run_id")
    if isinstance(run_id, str) and run_id:
        return f"run {run_id}"
    content = {k: v for k, v in result.items()
               if k not in ("results_file", "method") and not k.startswith("_")}  # fmt: skip
    return f"content {_digest(content)[:16]}"


def count_once(results: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The results with every run counted once (the first file found is kept), and one note
    per run found more than once: ``2 copies of run X counted once (files)``.

    Copies are results with one run key and the same settings and data (a run id found with
    other settings is not a copy: it stays, and its cell is split). Copies whose metrics differ
    (a copy edited, or taken mid-way) are said to differ in the note.
    """
    kept: dict[tuple[str, str, str], dict[str, Any]] = {}
    copies: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for result in results:
        key = (run_key(result), settings_of(result), data_of(result))
        copies.setdefault(key, []).append(result)
        kept.setdefault(key, result)
    notes = []
    for key, found in copies.items():
        if len(found) > 1:
            files = ", ".join(str(r.get("results_file", "?")) for r in found)
            differ = len({json.dumps(r.get("metrics"), sort_keys=True) for r in found}) > 1
            tail = f"; their metrics differ, kept {found[0].get('results_file', 'the first')}"
            notes.append(
                f"{len(found)} copies of {key[0]} counted once ({files}{tail if differ else ''})"
            )
    return list(kept.values()), notes


def separate_datasets(results: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The results with one dataset name per dataset: where runs named ``X`` used different
    data (:func:`data_of` differs), each version becomes ``X [data 1a2b3c4d]`` (its own table,
    never compared with the other), and a note says so."""
    versions: dict[str, set[str]] = {}
    for result in results:
        versions.setdefault(str(result.get("dataset")), set()).add(data_of(result))
    out, notes = [], []
    for result in results:
        name = str(result.get("dataset"))
        if len(versions[name]) > 1:
            result = {**result, "dataset": f"{name} [data {data_of(result)[:8]}]"}
        out.append(result)
    for name, found in versions.items():
        if len(found) > 1:
            tags = ", ".join(f"{name} [data {d[:8]}]" for d in sorted(found))
            notes.append(
                f"{len(found)} different datasets are named {name} (their files or classes "
                f"differ): reported apart as {tags}"
            )
    return out, notes


def one_run_per_seed(
    results: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The results with one run per seed of a setting: two runs (different run ids) of one
    method, arm, mode, fraction, settings, data, seed and label seed are the same seed run twice,
    not two independent seeds; the first found is kept, and a note names both."""
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    repeats: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for result in results:
        if result.get("seed") is None:
            kept[("no seed", id(result))] = result
            continue
        key = (result.get("method"), result.get("arm"), result.get("mode"),
               result.get("label_fraction"), settings_of(result), data_of(result),
               str(result.get("seed")), str(result.get("label_seed")))  # fmt: skip
        repeats.setdefault(key, []).append(result)
        kept.setdefault(key, result)
    notes = []
    for key, found in repeats.items():
        if len(found) > 1:
            runs = ", ".join(f"{run_key(r)} ({r.get('results_file', '?')})" for r in found)
            notes.append(
                f"seed {key[6]} of {key[0]} {key[1]} ({key[2]}, fraction {key[3]:g}) was run "
                f"{len(found)} times: {runs}; counted once (the first), not as independent seeds"
            )
    return list(kept.values()), notes


def prepare(results: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every run once (:func:`count_once`), every seed once (:func:`one_run_per_seed`), each
    dataset version apart (:func:`separate_datasets`); with the notes a report shows."""
    once, copies = count_once(results)
    seeded, repeated = one_run_per_seed(once)
    separated, datasets = separate_datasets(seeded)
    return separated, [*copies, *repeated, *datasets]
