"""A ``results.json`` checked before any number of it reaches a table or a verdict.

A report's numbers are only as good as the files it reads; a tampered or broken file (a score of
5.0 or 1e308, a NaN written by hand, a list where a number belongs, no metrics at all) is
refused with the file and the key named, never averaged and never a raw traceback.
``null`` is the one non-number a metric may hold: ``cass-finetune`` writes it for a metric that
was not finite, and the report shows that seed as missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cass_lightning.io import RecordError, read_json

#: Keys every fine-tuning ``results.json`` holds (what the report reads).
REQUIRED_KEYS = ("init", "arm", "mode", "dataset", "label_fraction", "metrics")


class ResultsFileError(ValueError):
    """A results file the report refuses; the message names the file and the key."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_range(name: str) -> tuple[float, float]:
    """Where a metric's values lie: losses in [0, inf), every score (F1, accuracy, AUROC, ...)
    in [0, 1]."""
    return (0.0, math.inf) if "loss" in name.rsplit("/", 1)[-1] else (0.0, 1.0)


def check_metric(name: str, value: Any, where: str) -> None:
    """Refuse a metric that is neither ``null`` nor a finite number in its range."""
    if value is None:
        return
    if not _number(value):
        raise ResultsFileError(
            f"{where}: metric {name} is {type(value).__name__} {json.dumps(value)[:60]}, not a "
            "number; the file was not written by cass-finetune as it is"
        )
    low, high = metric_range(name)
    if not math.isfinite(value) or not low <= value <= high:
        raise ResultsFileError(
            f"{where}: metric {name} = {value!r} is not a finite number in [{low:g}, {high:g}]; "
            "the file was not written by cass-finetune as it is (a non-finite metric is "
            "recorded as null)"
        )


def _check_support(result: dict[str, Any], where: str) -> None:
    per_class = result.get("per_class")
    if per_class is None:
        return
    if not isinstance(per_class, dict):
        raise ResultsFileError(f"{where}: per_class must be an object with f1 and support")
    for key in ("f1", "support"):
        values = per_class.get(key)
        if values is not None and not isinstance(values, list):
            raise ResultsFileError(f"{where}: per_class.{key} must be a list, one per class")
    for value in per_class.get("support") or []:
        if not _number(value) or not math.isfinite(value) or value < 0:
            raise ResultsFileError(f"{where}: per_class.support holds {value!r}, not a count")
    for i, value in enumerate(per_class.get("f1") or []):
        check_metric(f"per_class.f1[{i}]", value, where)


def check_result(
    result: Any, where: str, required: Sequence[str] = REQUIRED_KEYS
) -> dict[str, Any]:
    """``result`` when it is a results.json the report can trust (holding ``required``);
    :class:`ResultsFileError` naming ``where`` and the key otherwise."""
    if not isinstance(result, dict):
        raise ResultsFileError(
            f"{where} is not a cass-finetune results.json: a JSON object expected, found a "
            f"{type(result).__name__}"
        )
    absent = [k for k in required if k not in result]
    if absent:
        raise ResultsFileError(
            f"{where} lacks {', '.join(absent)}: not a cass-finetune results.json"
        )
    for key in ("arm", "mode", "dataset", "init", "method"):
        if key in result and (not isinstance(result[key], str) or not result[key]):
            raise ResultsFileError(f"{where}: {key} must be a name, not {result[key]!r}")
    fraction = result.get("label_fraction")
    if not _number(fraction) or not math.isfinite(fraction) or not 0 < fraction <= 1:
        raise ResultsFileError(
            f"{where}: label_fraction must be a number in (0, 1], not {json.dumps(fraction)[:60]}"
        )
    for key in ("seed", "label_seed"):
        value = result.get(key)
        if value is not None and not isinstance(value, (int, str)):
            raise ResultsFileError(f"{where}: {key} must be a number or a name, not {value!r}")
    metrics = result.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ResultsFileError(
            f"{where}: metrics must be an object of test metrics, found {json.dumps(metrics)[:60]}"
        )
    for name, value in metrics.items():
        check_metric(str(name), value, where)
    pretrain = result.get("pretrain")
    if pretrain is not None and not isinstance(pretrain, dict):
        raise ResultsFileError(f"{where}: pretrain must be an object with batch_size and epochs")
    _check_support(result, where)
    return result


def load_result(path: str | Path) -> dict[str, Any]:
    """Read and check one ``results.json`` (a NaN or Infinity literal is refused too)."""
    file = Path(path)
    try:  # plain JSON, bounded in size and depth
        result = read_json(file, "results.json", finite=True)
    except RecordError as err:
        finite = "allows" in str(err)  # a NaN/Infinity literal
        hint = " (cass-finetune records a non-finite metric as null)" if finite else ""
        raise ResultsFileError(f"{err}{hint}") from None
    return check_result(result, str(file))
