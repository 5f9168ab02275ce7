"""Hydra override strings as typed on a command line: their keys and values, quoting a path as
a value, telling Hydra's own flags apart from the overrides, and telling the overrides a user
could type for an app from those that would make it call arbitrary code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def quote(path: Path) -> str:
    """``path`` as a Hydra override value: quoted, so ``,`` ``=`` and spaces stay literal."""
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def override_key(override: str) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(override)
    except Exception:  # Hydra reports malformed overrides itself, with its own message
        return None
    return f"{parsed.key_or_group}@{parsed.package}" if parsed.package else parsed.key_or_group


def override_value(override: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).value()


def split_flags(args: list[str], overrides: list[str]) -> list[str]:
    """The tokens of ``args`` that are not the (ordered) ``overrides``: Hydra's own flags."""
    flags, pending = [], list(overrides)
    for token in args:
        if pending and token == pending[0]:
            pending.pop(0)
        else:
            flags.append(token)
    return flags


#: Hydra's instantiation keys: a config node holding one of them becomes a call of any callable.
_INSTANTIATION = re.compile(r"_(target|args|partial|recursive|convert)_")
#: ``${name:...}``: an interpolation that calls a resolver (``oc.env``, ``oc.create``...).
_RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")
#: Groups whose entries the apps instantiate one by one (an added entry is an added object).
_INSTANTIATED_GROUPS = ("callbacks", "logger")


def _options(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _holds_node(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list | tuple) and any(_holds_node(v) for v in value)


def _refusal(override: str, config_dir: Path, placement: set[str]) -> str | None:
    """Why ``override`` is not something a user could type for this app's keys, else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if _INSTANTIATION.search(override):
        return "names a Hydra _target_/_args_ key, i.e. code to call"
    if _RESOLVER_CALL.search(override):
        return "calls an interpolation resolver"
    try:
        parsed = OverridesParser.create().parse_override(override)
    except Exception:
        return "is not a valid override"
    key = parsed.key_or_group
    if parsed.package:
        return "moves a config to another package (@)"
    if parsed.is_sweep_override():
        return "is a sweep, not one run's setting"
    if key in placement:
        return None
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return "changes Hydra itself (only the run folder may be set)"
    if (config_dir / key).is_dir():  # a config group: each option must be one of its files
        for option in _options(parsed.value() if not parsed.is_delete() else None):
            if option is None:
                continue
            name = str(option)
            if (
                "/" in name
                or "\\" in name
                or name.startswith(".")
                or not (config_dir / key / f"{name}.yaml").is_file()
            ):
                return f"names {key}={name}, which is not one of the app's {key} configs"
        return None
    if "/" in key:
        return f"names the config group {key}, which the app does not have"
    if parsed.is_add() or parsed.is_force_add():
        if key.split(".")[0] in _INSTANTIATED_GROUPS:
            return f"adds an entry to {key.split('.')[0]}, whose entries become objects"
        if _holds_node(parsed.value()):
            return "adds a config node"
    return None


def refused_overrides(
    overrides: list[str], config_dir: Path, placement: set[str]
) -> list[tuple[str, str]]:
    """The overrides (with the reason) that are not what a user could type for this app's own
    keys and groups: anything naming ``_target_`` (in a key or a value), resolver calls,
    ``+``/``++`` additions of nodes or of entries to instantiated groups, ``hydra.*`` keys other
    than the ``placement`` ones, ``@package`` moves, and groups or options the app lacks.

    Used on a run folder's saved ``.hydra/overrides.yaml`` before ``resume=`` applies it: a
    folder from elsewhere could otherwise make the resumed run call any Python callable.
    """
    refused = []
    for override in overrides:
        reason = _refusal(str(override), config_dir, placement)
        if reason is not None:
            refused.append((str(override), reason))
    return refused
