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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cass_lightning.io import RecordError, read_json

#: The arms and fine-tuning modes a result may name (ClassifierModule's; kept here so the
#: report does not import torch).
ARMS = ("cnn", "vit")
MODES = ("finetune", "linear")
SAFE_PUNCTUATION = "space . , ' & _ - + ( ) /"
#: What a name read from a results file may hold: it is printed into Markdown and CSV tables,
#: so no newline, pipe, backtick, bracket or markup character can make a row of its own (the
#: one bracket allowed is the report's own tag of a dataset told apart by its files).
SAFE_NAME = re.compile(r"[^\W_][\w .,'&+()/-]{0,99}( \[data [0-9a-f]{8}\])?")
#: A class name (a folder or column of the user's data): anything printable but what would
#: break a Markdown table or link.
CLASS_NAME = re.compile(r"[^\x00-\x1f\x7f|`<>\[\]\\]{1,100}")
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
        if not _count(value):
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
    for key in ("arm", "mode", "dataset", "init", "method", "timm_name", "layout"):
        if key in result and (not isinstance(result[key], str) or not SAFE_NAME.fullmatch(
                result[key])):  # fmt: skip
            raise ResultsFileError(
                f"{where}: {key} must be a name of letters, digits and {SAFE_PUNCTUATION} "
                f"(at most 100), not {json.dumps(result[key])[:60]}"
            )
    for key, allowed in (("arm", ARMS), ("mode", MODES)):
        if result.get(key, allowed[0]) not in allowed:
            raise ResultsFileError(
                f"{where}: {key} is {result[key]!r}, not one of {', '.join(allowed)}"
            )
    img_size = result.get("img_size")
    if img_size is not None and (not isinstance(img_size, int) or isinstance(img_size, bool)
                                 or img_size < 1):  # fmt: skip
        raise ResultsFileError(f"{where}: img_size must be a whole number, not {img_size!r}")
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
    for key in ("batch_size", "epochs"):
        value = (pretrain or {}).get(key)
        if value is not None and not _count(value, minimum=1):
            raise ResultsFileError(
                f"{where}: pretrain.{key} must be a whole number >= 1, not {json.dumps(value)}"
            )
    classes = result.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(
            isinstance(c, str) and CLASS_NAME.fullmatch(c) for c in classes)):  # fmt: skip
        raise ResultsFileError(
            f"{where}: classes must be names without line breaks, pipes, backticks, brackets "
            f"or angle brackets, found {json.dumps(classes)[:60]}"
        )
    _check_support(result, where)
    _check_confusion(result.get("confusion"), where)
    return result


def _count(value: Any, minimum: int = 0) -> bool:
    """A whole number of things (an int, or a float with no fraction, as JSON may write it)."""
    return _number(value) and math.isfinite(value) and value == int(value) and value >= minimum


def _check_confusion(confusion: Any, where: str) -> None:
    """A confusion matrix: rows of counts, square (multi-label: one 2 x 2 per class)."""
    if confusion is None:
        return
    cells = confusion
    while isinstance(cells, list) and cells and isinstance(cells[0], list):
        cells = [c for row in cells for c in row]
    if not isinstance(confusion, list) or not all(_count(c) for c in cells):
        raise ResultsFileError(
            f"{where}: confusion must hold counts (whole numbers >= 0), found "
            f"{json.dumps(confusion)[:60]}"
        )


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
