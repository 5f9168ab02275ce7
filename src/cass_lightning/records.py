"""What each file a run reads back may hold: an export's ``meta.json``, a pretraining
checkpoint's ``hyper_parameters``, ``run_info.json`` and ``summary.json``.

A folder handed over from elsewhere (a run, an export, a study) is data, and what it says may
reach a timm constructor, a datamodule or a logger's run id. So the fields that do are checked
here against what they may hold (types, ranges, finite numbers, names of a plain pattern,
shapes that agree: as many mean/std values as input channels, as many class names as the
head has outputs), and anything else is refused with a :class:`~cass_lightning.io.RecordError`
naming the file and the field. A string such as ``${oc.create:...}`` is never a valid number,
size or name, so it cannot reach anything that would evaluate it. Files are parsed by
:func:`~cass_lightning.io.read_json` / :func:`~cass_lightning.io.read_yaml` (plain values only).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cass_lightning.io import RecordError, read_json

#: A name read back (method, run id, timm model, arm): letters, digits, ``_``, ``-``, ``.``.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: A run id: also a wandb run id and part of file names, so no ``/``, ``$`` or spaces.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: A class name: a word character first, then words, spaces and common punctuation; no line
#: breaks, ``|``, ``$``, ``{`` or path separators (it becomes a CSV column and a report cell).
CLASS_NAME = re.compile(r"[^\W][\w .,+()&'#%-]{0,199}")
#: Input sizes a model may be built at (a ViT's position grid is sized from it).
IMG_SIZE = (8, 4096)
IN_CHANS = (1, 16)
#: Normalisation of images scaled to [0, 1]: a channel's mean lies in [0, 1]; its std above
#: zero (a std of 0 would divide every pixel by zero) and far from it.
MEAN_RANGE = (0.0, 1.0)
STD_RANGE = (1e-3, 10.0)
#: The arms an export may hold (``export.ARMS``; that module imports this one).
ARMS = ("cnn", "vit")


class Fields:
    """The fields of one record (a mapping), each checked by name; errors say
    ``<file>: <field> ...``."""

    def __init__(self, record: Any, source: str | Path, what: str, prefix: str = "") -> None:
        if not isinstance(record, Mapping):
            kind = type(record).__name__
            if prefix:
                raise RecordError(f"{source}: {what} field {prefix.rstrip('.')} holds a {kind}, "
                                  "not an object")  # fmt: skip
            raise RecordError(f"{source} is not a valid {what}: it holds a {kind}, not an object")
        self.record, self.source, self.what, self.prefix = record, str(source), what, prefix

    def refuse(self, key: str, why: str) -> RecordError:
        return RecordError(f"{self.source}: {self.what} field {self.prefix}{key} {why}")

    def has(self, key: str) -> bool:
        return self.record.get(key) is not None

    def sub(self, key: str) -> Fields:
        return Fields(self.record.get(key), self.source, self.what, f"{self.prefix}{key}.")

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.record or (optional and self.record[key] is None):
            if optional:
                return None
            raise self.refuse(key, "is missing")
        return self.record[key]

    def integer(self, key: str, low: int, high: int, optional: bool = False) -> int | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.refuse(key, f"must be an integer in [{low}, {high}]; got {_shown(value)}")
        return value

    def number(self, key: str, low: float, high: float, optional: bool = False) -> float | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        return _number(self, key, value, low, high)

    def numbers(self, key: str, length: int | None, low: float, high: float,
                optional: bool = False) -> list[float] | None:  # fmt: skip
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, list | tuple) or not value or len(value) > IN_CHANS[1]:
            raise self.refuse(key, f"must be a list of numbers; got {_shown(value)}")
        if length is not None and len(value) != length:
            raise self.refuse(key, f"holds {len(value)} values for {length} input channels")
        return [_number(self, f"{key}[{i}]", v, low, high) for i, v in enumerate(value)]

    def name(self, key: str, pattern: re.Pattern[str] = PLAIN_NAME,
             optional: bool = False) -> str | None:  # fmt: skip
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.refuse(key, f"is not a plain name ({pattern.pattern}); got {_shown(value)}")
        return value

    def choice(self, key: str, choices: tuple[Any, ...], optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        allowed = ", ".join(map(str, choices))
        raise self.refuse(key, f"must be one of {allowed}; got {_shown(value)}")

    def flag(self, key: str, optional: bool = False) -> bool | None:
        value = self._get(key, optional)
        if (value is None and optional) or isinstance(value, bool):
            return value
        raise self.refuse(key, f"must be true or false; got {_shown(value)}")

    def text(self, key: str, longest: int = 4096, optional: bool = True) -> str | None:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str) or len(value) > longest or "\x00" in value:
            raise self.refuse(key, f"must be a text of at most {longest} characters")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(fields: Fields, key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fields.refuse(key, f"must be a number; got {_shown(value)}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise fields.refuse(key, f"must be a finite number in [{low:g}, {high:g}]; got {value!r}")
    return number


def check_timm_name(fields: Fields, key: str) -> str:
    """A model name timm knows (an unknown one would otherwise end in timm's traceback)."""
    import timm

    name = fields.name(key)
    assert name is not None
    if not timm.is_model(name):
        raise fields.refuse(key, f"names {name!r}, which is not a timm model of this timm "
                                 f"({timm.__version__})")  # fmt: skip
    return name


def check_class_names(fields: Fields, key: str) -> list[str]:
    """Unique class names of :data:`CLASS_NAME`'s pattern (they become columns and cells)."""
    value = fields.record.get(key)
    if not isinstance(value, list) or not value or len(value) > 100_000:
        raise fields.refuse(key, f"must be a non-empty list of class names; got {_shown(value)}")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
            raise fields.refuse(f"{key}[{i}]", f"is not a plain class name; got {_shown(name)}")
    seen: set[str] = set()
    twice = [n for n in value if n in seen or seen.add(n)]
    if twice:
        raise fields.refuse(key, f"names {twice[0]!r} twice: every class needs its own name")
    return list(value)


def _normalisation(fields: Fields, chans: int | None) -> None:
    fields.numbers("mean", chans, *MEAN_RANGE, optional=True)
    fields.numbers("std", chans, *STD_RANGE, optional=True)


def plain_int(value: Any, what: str) -> int:
    """``value`` as an int, for a value read from a file that goes on into a config: an int
    (or an integral float) passes, anything else (a string above all) is refused by name."""
    integral = isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise RecordError(f"{what} must be an integer; got {_shown(value)}")
    return int(value)


def plain_floats(values: Any, what: str) -> list[float]:
    """``values`` as a list of finite floats (see :func:`plain_int`)."""
    if not isinstance(values, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise RecordError(f"{what} must be a list of finite numbers; got {_shown(values)}")
    return [float(v) for v in values]


# ----------------------------------------------------------------------------- exports
def check_backbone_meta(meta: Any, source: str | Path) -> dict[str, Any]:
    """A backbone export's ``meta.json`` (``<arm>.safetensors`` per arm), checked."""
    what = "export meta.json"
    top = Fields(meta, source, what)
    top.name("method", optional=True)
    top.integer("img_size", *IMG_SIZE, optional=True)
    chans = set()
    for arm in ARMS:
        if arm not in meta:
            continue
        entry = top.sub(arm)
        check_timm_name(entry, "timm_name")
        chans.add(entry.integer("in_chans", *IN_CHANS))
        entry.integer("img_size", *IMG_SIZE, optional=True)
        entry.integer("num_classes", 0, 1_000_000, optional=True)
        entry.choice("file", (f"{arm}.safetensors",))
        entry.choice("projector_file", (f"{arm}_projector.safetensors",), optional=True)
    if not chans:
        raise top.refuse("cnn/vit", "is missing: the export holds no arm")
    _normalisation(top, next(iter(chans)) if len(chans) == 1 else None)
    return meta


def check_classifier_meta(meta: Any, source: str | Path) -> dict[str, Any]:
    """A classifier export's ``meta.json`` (or one built from a fine-tuning checkpoint),
    checked: what rebuilds the model and feeds it its images."""
    fields = Fields(meta, source, "classifier meta.json")
    arm = fields.choice("arm", ARMS)
    check_timm_name(fields, "timm_name")
    fields.integer("img_size", *IMG_SIZE)
    chans = fields.integer("in_chans", *IN_CHANS)
    fields.numbers("mean", chans, *MEAN_RANGE)
    fields.numbers("std", chans, *STD_RANGE)
    classes = check_class_names(fields, "classes")
    if fields.has("num_classes") and fields.record["num_classes"] != len(classes):
        raise fields.refuse("num_classes", f"is {fields.record['num_classes']!r} but classes "
                                           f"names {len(classes)}")  # fmt: skip
    multi = fields.flag("multi_label")
    fields.number("threshold", 0.0, 1.0, optional=not multi)
    fields.name("method", optional=True)
    if "file" in meta:
        fields.choice("file", (f"{arm}_classifier.safetensors",))
    return meta


# ----------------------------------------------------------------------------- checkpoints
def check_pretraining_hparams(hp: Any, source: str | Path, arm: str) -> dict[str, Any]:
    """A pretraining checkpoint's ``hyper_parameters``: what fine-tuning reads of one arm."""
    fields = Fields(hp, source, "checkpoint", "hyper_parameters.")
    check_timm_name(fields, arm)
    fields.integer("img_size", *IMG_SIZE)
    chans = fields.integer("in_chans", *IN_CHANS, optional=True) or 3
    fields.name("method", optional=True)
    _normalisation(fields, chans)
    return dict(hp)


# ----------------------------------------------------------------------------- run records
def check_run_info(info: Any, source: str | Path) -> dict[str, Any]:
    """``run_info.json``: the run id (a wandb id and part of file names) and every start."""
    fields = Fields(info, source, "run_info.json")
    fields.name("run_id", RUN_ID, optional=True)
    fields.name("run_uuid", RUN_ID, optional=True)
    fields.text("created", 64)
    starts = info.get("starts", [])
    if not isinstance(starts, list) or len(starts) > 100_000:
        raise fields.refuse("starts", f"must be a list of starts; got {_shown(starts)}")
    for i, start in enumerate(starts):
        entry = Fields(start, source, "run_info.json", f"starts[{i}].")
        for key in ("seconds", "train_seconds"):
            entry.number(key, 0.0, 1e9, optional=True)
        for key in ("steps", "images"):
            entry.integer(key, 0, 10**12, optional=True)
        for key in ("started", "ended", "outcome", "host", "resumed_from"):
            entry.text(key)
        overrides = start.get("overrides", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise entry.refuse("overrides", "must be a list of strings")
    return info


def check_summary(summary: Any, source: str | Path) -> dict[str, Any]:
    """A pretraining ``summary.json``: the cost figures a study report reads from it."""
    fields = Fields(summary, source, "summary.json")
    for key in ("fit_seconds", "images_per_s", "peak_memory_gib"):
        fields.number(key, 0.0, 1e12, optional=True)
    for key in ("epochs", "batch_size", "steps"):
        fields.integer(key, 0, 10**12, optional=True)
    fields.flag("cost_comparable", optional=True)
    fields.name("method", optional=True)
    for key in ("dataset", "memory_kind"):
        fields.text(key, 200)
    if fields.has("metrics"):  # an object (a requeued finished run hands it back)
        fields.sub("metrics")
    return summary


def read_record(path: str | Path, kind: str) -> dict[str, Any]:
    """The file ``path`` read as plain JSON and checked as ``kind`` (``run_info``,
    ``summary``, ``backbone_meta``, ``classifier_meta``)."""
    checks = {"run_info": (check_run_info, "run_info.json"),
              "summary": (check_summary, "summary.json"),
              "backbone_meta": (check_backbone_meta, "export meta.json"),
              "classifier_meta": (check_classifier_meta, "classifier meta.json")}  # fmt: skip
    check, what = checks[kind]
    return check(read_json(path, what), path)
