"""JSON parsing that accepts only plain, bounded JSON.

Python's ``json.loads`` also takes NaN and Infinity, keeps the last of two equal keys without a
word, and recurses once per nesting level (``"[" * 100000`` raises ``RecursionError``, which
would surface as a 500). Every body, meta part and safetensors header the coordinator reads
goes through :func:`loads`, which refuses all three with ``ValueError`` (answered as 400
``invalid_json``, like any other bad JSON) and refuses nesting deeper than
:data:`MAX_DEPTH`, far beyond anything the protocol sends (its deepest message nests 4 levels).

A number literal too large for a float (``1e999``) still parses, to infinity: the field checks
(:mod:`coordinator.fields`) refuse it with a 422 naming the field, and
:func:`first_non_finite` finds one anywhere in a free-form object before it can be stored.
"""

from __future__ import annotations

import json
import math

#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 32


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key[:80]!r} in a JSON object")
            seen.add(key)
    return result


def depth(value) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            level += 1
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads(raw: str | bytes):
    """``json.loads`` that refuses NaN / Infinity, duplicate keys and deep nesting (``ValueError``)."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=_refuse_duplicate_keys)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    if depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def first_non_finite(value, path: str = "") -> str | None:
    """The path (``tier.train.lr``) of the first non-finite float in ``value``, or None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where or "(the value)"
        if isinstance(item, dict):
            stack.extend((child, f"{where}.{key}" if where else str(key)) for key, child in item.items())
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None
