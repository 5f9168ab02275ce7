"""Checks of plain settings, each with an error that names the setting, the value and the fix.

One place for the rules every layer applies to what a user typed: a value among choices, a
positive number, an int at least some bound. Callers pass the name the user knows (e.g.
``data.batch_size`` or ``model.optimizer.lr``) so the message points at the right key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    allowed = tuple(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (bools and floats refused: ``True`` is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float ``> 0`` (or ``>= 0`` with ``allow_zero``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if number == 0 and not allow_zero:
        raise ValueError(f"{name} must be > 0; got {value!r}")
    return number


def check_keys(name: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse keys a settings dict does not know, so a typo never silently does nothing."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; known: {sorted(known)}")
