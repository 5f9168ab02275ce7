"""The one list of methods: every pretraining method and the baselines the report shows.

Pretraining, export, fine-tuning, the study's plan and every report read this list instead of
naming methods themselves, so a new method is its module, its config and one :func:`register`
call here. The module class is stored as a ``"package.module:Class"`` string and imported only
when asked for (:meth:`Method.module_class`): the study's planner and the report read the
registry without importing torch or Lightning.

The method that wrote a checkpoint or an export is recorded in it (``method`` in the
checkpoint's hyperparameters and in ``meta.json``); :func:`recorded_method` reads it back and is
the one place that still tells a method from keys, for files written before it was recorded.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Arms of the two encoders.
ARMS = ("cnn", "vit")
#: ``Method.arms`` for a method that trains and exports both encoders together.
BOTH = "both"
#: ``Method.arms`` for a method that trains the one encoder named by its ``arm`` hyperparameter.
ONE = "one"


@dataclass(frozen=True)
class Method:
    """One row family of the study's table.

    Args:
        name: the key written into checkpoints, exports, results and the study's settings.
        label: what tables and plots print.
        module: ``"package.module:Class"`` of its LightningModule; ``None`` for a baseline that
            is not pretrained here (ImageNet weights, random init).
        config: the ``conf/model/<config>.yaml`` that selects it.
        arms: :data:`BOTH` (one run trains and exports ``cnn`` and ``vit``) or :data:`ONE`
            (one run per arm, chosen by ``model.arm``).
        compared: CASS is compared with it in the report's verdicts.
        always_shown: the study's table shows its rows even when none ran (the paper's rows).
        in_grid: its pretraining is repeated over the robustness grid.
        select: the overrides that choose it in ``cass-pretrain`` (none for the default model).
    """

    name: str
    label: str
    module: str | None = None
    config: str | None = None
    arms: str = ONE
    compared: bool = True
    always_shown: bool = False
    in_grid: bool = True
    select: tuple[str, ...] = field(default=())

    @property
    def pretrains(self) -> bool:
        """Whether ``cass-pretrain`` trains it (False for the baselines)."""
        return self.module is not None

    def module_class(self) -> type:
        """The LightningModule class, imported now."""
        if self.module is None:
            raise ValueError(f"{self.name} is a baseline, not a pretraining method")
        path, _, name = self.module.partition(":")
        return getattr(importlib.import_module(path), name)

    def exported_arms(self, arm: str | None = None) -> tuple[str, ...]:
        """The arms one of its runs exports (``arm``: the run's ``model.arm`` for :data:`ONE`)."""
        if self.arms == BOTH:
            return ARMS
        if arm not in ARMS:
            raise ValueError(f"{self.name} trains one arm: give model.arm as one of {ARMS}")
        return (arm,)

    def pretrain_overrides(self, arm: str | None = None) -> list[str]:
        """The ``cass-pretrain`` overrides that choose it (and its arm)."""
        return [*self.select, *([] if self.arms == BOTH else [f"model.arm={arm}"])]


_REGISTRY: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (a name already there is refused unless ``replace``)."""
    if method.arms not in (BOTH, ONE):
        raise ValueError(f"Method.arms must be {BOTH!r} or {ONE!r}, got {method.arms!r}")
    if method.name in _REGISTRY and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests register toy methods and take them away again)."""
    _REGISTRY.pop(name, None)


def methods() -> tuple[Method, ...]:
    """Every registered method, in the table's order (CASS first, the baselines last)."""
    pretrained = [m for m in _REGISTRY.values() if m.pretrains]
    return (*pretrained, *(m for m in _REGISTRY.values() if not m.pretrains))


def method_names() -> tuple[str, ...]:
    """The names of :func:`methods`, in the same order."""
    return tuple(m.name for m in methods())


def pretraining_methods() -> tuple[Method, ...]:
    """The methods ``cass-pretrain`` trains."""
    return tuple(m for m in methods() if m.pretrains)


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is refused with the known ones listed."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(method_names())}")
    return _REGISTRY[key]


def method_label(name: str) -> str:
    """The display label of ``name`` (the name itself for one not registered)."""
    method = _REGISTRY.get(str(name).lower())
    return method.label if method is not None else str(name)


def name_of(text: str) -> str:
    """The registry name of ``text``, a name or a display label (``SimSiam`` -> ``simsiam``).

    Files written before every record held the name may hold the label; an unknown text is
    refused with the known names listed, never guessed.
    """
    key = str(text).strip().lower()
    if key in _REGISTRY:
        return key
    named = [m.name for m in _REGISTRY.values() if m.label.lower() == key]
    if len(named) != 1:
        raise ValueError(f"unknown method {text!r}; known: {', '.join(method_names())}")
    return named[0]


def labels() -> dict[str, str]:
    """``{name: label}`` of every registered method."""
    return {m.name: m.label for m in methods()}


#: Keys only DINO checkpoints ever had (used for files written before the method was recorded).
_LEGACY_DINO_KEYS = ("global_crops", "distillation", "teacher_temp")


def recorded_method(stored: Mapping[str, Any]) -> str:
    """The method a checkpoint's hyperparameters or an export's ``meta.json`` records.

    Files written before the method was recorded have none: the legacy rule reads them (DINO's
    keys mean ``dino``; anything else was CASS, the only other method then).
    """
    method = stored.get("method")
    if method is not None:
        return name_of(str(method))
    return "dino" if any(k in stored for k in _LEGACY_DINO_KEYS) else "cass"


register(Method("cass", "CASS", "cass_lightning.modules.cass:CASSModule", "cass", BOTH,
                compared=False, always_shown=True))  # fmt: skip
register(Method("dino", "DINO", "cass_lightning.modules.dino:DINOModule", "dino", ONE,
                always_shown=True, select=("model=dino",)))  # fmt: skip
register(Method("byol", "BYOL", "cass_lightning.modules.byol:BYOLModule", "byol", ONE,
                select=("model=byol",)))  # fmt: skip
register(Method("simsiam", "SimSiam", "cass_lightning.modules.simsiam:SimSiamModule", "simsiam",
                ONE, select=("model=simsiam",)))  # fmt: skip
register(Method("simclr", "SimCLR", "cass_lightning.modules.simclr:SimCLRModule", "simclr", ONE,
                select=("model=simclr",)))  # fmt: skip
register(Method("imagenet", "ImageNet", always_shown=True, in_grid=False))
register(Method("random", "Random", compared=False, in_grid=False))
