"""Checks for a configurator's options, so every configurator refuses bad values alike.

Options arrive in a job's JSON (``configurator_options``) from whoever creates the job. Each
check either returns the value (normalized where that is meaningful) or raises ``ValueError``
with the option's name in the message, which the coordinator passes back in its 400 answer:
someone who typed ``"discount": 1.2`` learns which option and which bound.
"""

from __future__ import annotations

import math


def number_option(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
                  exclusive_minimum: bool = False, integer: bool = False):
    """``value`` checked as a (finite) number in range, or ``ValueError`` naming option ``name``."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or not math.isfinite(value):
        raise ValueError(f"option {name!r} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ValueError(f"option {name!r} must be {'>' if exclusive_minimum else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"option {name!r} must be <= {maximum}, got {value!r}")
    return value


def list_option(name: str, value, **number_checks) -> list:
    """A non-empty list of numbers, each checked as :func:`number_option` does, repeats dropped."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"option {name!r} must be a non-empty list, got {value!r}")
    items = [number_option(f"{name}[{i}]", v, **number_checks) for i, v in enumerate(value)]
    return list(dict.fromkeys(items))


def bool_option(name: str, value) -> bool:
    """``value`` checked as true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"option {name!r} must be true or false, got {value!r}")
    return value


def schedule_option(name: str, value, *, maximum: float) -> list[list]:
    """A non-empty list of ``[round, value]`` steps, rounds (integers >= 1) strictly rising and
    values (in ``[0, maximum]``) never falling, or ``ValueError`` naming option ``name``."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"option {name!r} must be a non-empty list of [round, value] pairs, got {value!r}")
    steps = []
    for i, step in enumerate(value):
        if not isinstance(step, (list, tuple)) or len(step) != 2:
            raise ValueError(f"option {name!r}: step {i} must be a [round, value] pair, got {step!r}")
        start = number_option(f"{name}[{i}] round", step[0], minimum=1, integer=True)
        level = number_option(f"{name}[{i}] value", step[1], minimum=0.0, maximum=maximum)
        if steps and (start <= steps[-1][0] or level < steps[-1][1]):
            raise ValueError(f"option {name!r}: step {i} {list(step)} must come after {steps[-1]} "
                             "(rounds rising, values never falling)")
        steps.append([start, level])
    return steps
