"""Hydra override strings as typed on a command line: their keys and values, quoting a path as
a value, and telling Hydra's own flags apart from the overrides."""

from __future__ import annotations

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
