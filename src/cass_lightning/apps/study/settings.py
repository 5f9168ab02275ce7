"""The study's settings (``study.*``) checked before anything runs: a bad value is one named line
(exit 1) before the study writes a file, not an empty plan, a silently changed length or a
failure of every point after hours of pretraining."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from cass_lightning.apps.study.plan import ARMS, MODES
from cass_lightning.modules.registry import method_names

#: What ``study.name`` may hold: it names the study's folder (and its wandb group).
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_study_names(argv: Sequence[str]) -> str | None:
    """The refusal of a ``study.name=`` or ``study.dir=`` typed on the command line that
    cannot name a folder (Hydra would fail making it, with a traceback, before the study
    starts), or ``None``."""
    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        value = value.strip("'\"")
        if key == "study.name" and not STUDY_NAME.fullmatch(value) and "${" not in value:
            return (f"study.name={value[:40]}{'...' if len(value) > 40 else ''}: give 1-100 "
                    "letters, digits, '.', '_' or '-' (it names the study's folder)")  # fmt: skip
        if key == "study.dir" and any(len(part.encode()) > 255 for part in value.split("/")):
            return "study.dir: a folder name in it is longer than 255 bytes"
    return None


#: Where every point runs (``study.device``): the trainer config each point is given.
DEVICES = ("cpu", "gpu")


class StudySettingsError(ValueError):
    """A ``study.*`` setting the study cannot run with; the message names the key and value."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _list(plain: dict[str, Any], key: str) -> list[Any]:
    value = plain.get(key)
    if not isinstance(value, list | tuple) or not value:
        raise StudySettingsError(
            f"study.{key}={value!r}: give a non-empty list (e.g. study.{key}=[...]); with none "
            "the study would have nothing to run or report"
        )
    repeated = sorted({str(v) for v in value if list(value).count(v) > 1})
    if repeated:
        raise StudySettingsError(f"study.{key}={list(value)}: {', '.join(repeated)} listed twice")
    return list(value)


def _choices(plain: dict[str, Any], key: str, allowed: Sequence[str]) -> None:
    for value in _list(plain, key):
        if value not in allowed:
            raise StudySettingsError(f"study.{key}: {value!r} is not one of {', '.join(allowed)}")


def _positive_int(value: Any, key: str) -> None:
    if not _is_int(value) or value < 1:
        raise StudySettingsError(f"{key}={value!r}: give a whole number of at least 1")


def check_study_settings(plain: dict[str, Any]) -> None:
    """Raise :class:`StudySettingsError` naming the first bad ``study.*`` value in ``plain`` (the
    resolved ``study`` config): methods, arms and modes among the known ones, label fractions
    in (0, 1], seeds whole numbers, ``epoch_scale`` a positive number, pretraining epochs and
    batch size and the robustness grid positive whole numbers, ``device`` cpu or gpu. Lists must
    be non-empty and without repeats (a repeat would make two points of one id)."""
    _choices(plain, "methods", method_names())
    _choices(plain, "arms", ARMS)
    _choices(plain, "modes", MODES)
    for fraction in _list(plain, "fractions"):
        if not _is_number(fraction) or not 0 < fraction <= 1:
            raise StudySettingsError(
                f"study.fractions: {fraction!r} is not a label fraction in (0, 1] "
                "(1.0 = all labels)"
            )
    for seed in _list(plain, "seeds"):
        if not _is_int(seed):
            raise StudySettingsError(f"study.seeds: {seed!r} is not a whole number")
    scale = plain.get("epoch_scale", 1.0)
    if not _is_number(scale) or scale <= 0:
        raise StudySettingsError(
            f"study.epoch_scale={scale!r}: give a positive number (it multiplies every "
            "pretraining length, e.g. 0.1)"
        )
    pretrain = plain.get("pretrain") or {}
    _positive_int(pretrain.get("epochs"), "study.pretrain.epochs")
    _positive_int(pretrain.get("batch_size"), "study.pretrain.batch_size")
    if plain.get("robustness"):
        for key in ("batch_sizes", "epochs"):
            values = plain["robustness"].get(key)
            if not isinstance(values, list | tuple) or not values:
                raise StudySettingsError(
                    f"study.robustness.{key}={values!r}: give a non-empty list"
                )
            for value in values:
                _positive_int(value, f"study.robustness.{key}")
    device = plain.get("device", "cpu")
    if device not in DEVICES:
        raise StudySettingsError(f"study.device={device!r}: give one of {', '.join(DEVICES)}")


def refuse_merged_grid(epochs: list[int], scale: float) -> None:
    """Refuse an ``epoch_scale`` that makes two lengths of the robustness grid one (each
    rounds to the same whole number of epochs, at least 1): the grid would hold the same point
    twice and its heatmap columns would not be the lengths they are labelled with."""
    scaled = [max(1, round(int(e) * scale)) for e in epochs]
    if len(set(scaled)) < len(scaled):
        steps = [b - a for a, b in zip(sorted(epochs), sorted(epochs)[1:]) if b != a]
        smallest = min(steps) if steps else 1
        raise StudySettingsError(
            f"study.epoch_scale={scale:g} makes the robustness epochs {list(epochs)} into "
            f"{scaled}: grid points that are the same run. Give study.epoch_scale >= "
            f"{1 / smallest:.3g} (one epoch between the closest lengths), or fewer "
            "study.robustness.epochs"
        )


def fraction_problems(report: dict[str, Any], fractions: Sequence[float]) -> list[str]:
    """What each label fraction would become on this data (the study's ``data_report.json``):
    a fraction that gives some class less than one labelled training image is raised to one
    image of that class, so its column would not hold the fraction it is labelled with. One
    sentence per such fraction, naming the smallest fraction that keeps its meaning."""
    if report.get("multi_label"):
        return []  # labels are drawn per label set there, not per class
    train = ((report.get("splits") or {}).get("train") or {}).get("class_counts") or {}
    counts = {c: n for c, n in train.items() if isinstance(n, int) and n > 0}
    problems = []
    for fraction in fractions:
        short = {c: n for c, n in counts.items() if fraction * n < 1 - 1e-9}
        if not short or fraction >= 1:
            continue
        name, n = min(short.items(), key=lambda item: item[1])
        problems.append(
            f"study.fractions: {fraction:g} ({fraction * 100:g} %) gives {len(short)} class(es) "
            f"less than one labelled training image (e.g. {name}: {n} images): each would be "
            f"raised to one image ({1 / n:.1%} of {name}), not {fraction * 100:g} %. Give "
            f"fractions of at least {1 / min(counts.values()):.3g}, or leave {fraction:g} out"
        )
    return problems
