"""Type and range checks for the scalars of every request: one place, one wording.

Nothing a device or an operator sends is stored or computed with before it passes one of
these: integers are true integers (not booleans, not 2.5) inside a closed range, numbers are
finite and inside theirs. Every range has an upper bound too, so that no value can overflow a
64-bit database column, a sum over many rows, a ``float()`` or a ``timedelta`` later on.
Refusals are 422 ``invalid_field`` naming the field; the offending value is echoed only in
part (:func:`shown`), so an error never repeats a megabyte of input back.
"""

from __future__ import annotations

import json
import math

from coordinator.errors import ApiError

#: Longest rendering of an offending value inside an error message.
SHOWN_CHARS = 80
#: Any integer this API stores fits a signed 32-bit column (PostgreSQL ``integer``) unless a
#: field says otherwise; byte counts use 64-bit columns and their own, smaller bound.
INT32_MAX = 2**31 - 1


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """``value`` as JSON, cut to ``limit`` characters (for error messages)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    except RecursionError:
        text = "(deeply nested value)"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def integer(name: str, value, minimum: int, maximum: int) -> int:
    """``value`` if it is an integer in ``[minimum, maximum]``; else 422 naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ApiError("invalid_field", f"{name} must be an integer in [{minimum}, {maximum}], got {shown(value)}")
    return value


def boolean(name: str, value) -> bool:
    """``value`` if it is true or false (not 0/1, not a string); else 422 naming ``name``."""
    if not isinstance(value, bool):
        raise ApiError("invalid_field", f"{name} must be true or false, got {shown(value)}")
    return value


def number(name: str, value, minimum: float, maximum: float, *, exclusive_minimum: bool = False) -> float:
    """``value`` as a float if it is a finite number in range; else 422 naming ``name``.

    Integers too large for a float (a 400-digit literal) are refused like any other value out
    of range, before ``float()`` could overflow.
    """
    low = "(" if exclusive_minimum else "["
    bad = ApiError("invalid_field", f"{name} must be a finite number in {low}{minimum:g}, {maximum:g}], "
                                    f"got {shown(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad
    if isinstance(value, int) and abs(value) > 2**1000:  # float() would overflow
        raise bad
    value = float(value)
    if not math.isfinite(value) or value > maximum or value < minimum or (exclusive_minimum and value == minimum):
        raise bad
    return value


def unknown_keys(body: dict, allowed, what: str) -> None:
    """422 when ``body`` has keys outside ``allowed`` (naming at most a few of them)."""
    unknown = sorted(str(key) for key in set(body) - set(allowed))
    if unknown:
        listed = ", ".join(shown(key, 40) for key in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ApiError("invalid_field", f"{what} has unknown fields [{listed}{more}]; allowed: {sorted(allowed)}")
