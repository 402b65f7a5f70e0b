"""JSON parsing that accepts only JSON: Python's ``json.loads`` also takes NaN and Infinity.

Every body, meta part and safetensors header the coordinator reads goes through :func:`loads`,
so a non-finite number can never slip into a stored record through any of them.
"""

from __future__ import annotations

import json


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def loads(raw: str | bytes):
    """``json.loads`` that refuses NaN / Infinity (``ValueError``, like any other bad JSON)."""
    return json.loads(raw, parse_constant=_refuse_constant)
