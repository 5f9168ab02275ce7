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
#: The only value types a saved override may hold: what a user types as plain settings.
_LITERALS = (str, int, float, bool, type(None))


def _options(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _not_literal(value: Any) -> str | None:
    """Why ``value`` (a parsed override value) is not a plain literal, else None: any ``${``
    (an interpolation, a resolver call, nested or escaped: OmegaConf would evaluate it when the
    run reads the key), any instantiation key, or a value of another type (a sweep)."""
    if isinstance(value, str):
        if "${" in value:
            return "holds an interpolation (${...}), which OmegaConf would evaluate"
        if _INSTANTIATION.search(value):
            return "names a Hydra _target_/_args_ key, i.e. code to call"
        return None
    if isinstance(value, _LITERALS):
        return None
    if isinstance(value, list | tuple):
        for item in value:
            if (why := _not_literal(item)) is not None:
                return why
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if (why := _not_literal(key) or _not_literal(item)) is not None:
                return why
        return None
    return f"is not a plain value ({type(value).__name__})"


def _refusal(override: str, config_dir: Path, placement: set[str], parser: Any) -> str | None:
    """Why ``override`` is not a plain setting of this app's own keys and groups, else None.

    Parsed with Hydra's own override parser, so quoting and escapes are undone before the
    checks: what is checked is what Hydra would apply."""
    if _INSTANTIATION.search(override):  # in the text as written, and below once parsed
        return "names a Hydra _target_/_args_ key, i.e. code to call"
    if "${" in override:
        return "holds an interpolation (${...}), which OmegaConf would evaluate"
    try:
        parsed = parser.parse_overrides([override])[0]
    except Exception:
        return "is not a valid override"
    key = parsed.key_or_group
    plain_change = not (parsed.is_add() or parsed.is_force_add() or parsed.package)
    if key in placement and plain_change and parsed.value_type is not None:
        if parsed.is_sweep_override():
            return "is a sweep, not one run's setting"
        return _not_literal(parsed.value())
    if "${" in key or _INSTANTIATION.search(key):
        return "names a Hydra _target_/_args_ key or an interpolation in its key"
    if parsed.package:
        return "moves a config to another package (@)"
    if parsed.is_delete():
        return "deletes a setting (~)"
    if parsed.is_add() or parsed.is_force_add():
        return "adds a new key (+/++), which the app's own settings do not have"
    if parsed.is_sweep_override():
        return "is a sweep, not one run's setting"
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return "changes Hydra itself (only the run folder may be set)"
    value = parsed.value()
    why = _not_literal(value)  # (placement keys were checked above, hydra.* refused here)
    if why is not None:
        return why
    if (config_dir / key).is_dir():  # a config group: each option must be one of its files
        for option in _options(value):
            if option is None:
                continue
            name = str(option)
            if (
                "/" in name
                or "\\" in name
                or name.startswith((".", "_"))  # _common.yaml: a base, not a choice
                or not (config_dir / key / f"{name}.yaml").is_file()
            ):
                return f"names {key}={name}, which is not one of the app's {key} configs"
        return None
    if "/" in key:
        return f"names the config group {key}, which the app does not have"
    return None


def refused_overrides(
    overrides: list[str], config_dir: Path, placement: set[str]
) -> list[tuple[str, str]]:
    """The overrides (with the reason) that are not plain settings a user could type for this
    app's own keys and groups. Accepted: a key without ``+``/``++``/``~``/``@``, not under
    ``hydra`` (except the ``placement`` keys), whose value is a plain literal (string, number,
    bool, null, or a list/dict of them) with no ``${`` anywhere and no ``_target_`` in key or
    value, and a config group choice that is one of the group's files under ``config_dir``.
    A key the app does not have is left to Hydra, which refuses it when composing.

    Used on a run folder's saved ``.hydra/overrides.yaml`` before ``resume=`` applies it, and on
    the overrides of a study's ``plan.json`` points: a folder from elsewhere could otherwise make
    the run evaluate a resolver or call any Python callable.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    refused = []
    for override in overrides:
        reason = _refusal(str(override), config_dir, placement, parser)
        if reason is not None:
            refused.append((str(override), reason))
    return refused
