"""How a federated job's learning rate moves across its rounds (no torch: the coordinator's
request path computes each round's rate without loading the model stack).

``constant``: every round trains at ``lr``. ``cosine``: round r of R trains at
``floor + (lr - floor) * (1 + cos(pi * (r - 1) / R)) / 2`` with ``floor = lr_min * lr``, so late
rounds take small steps and the global model settles instead of swinging with each round's
sample of devices: under label skew each device's fixed-size Adam steps pull towards its own
classes, and shrinking them is what lets the average converge. The last round keeps a small
positive rate (progress (R-1)/R, not 1), so no round is wasted. A device is always told one
plain rate for its round; it never sees the schedule.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def lr_for_round(lr: float, schedule: str, lr_min: float, round_number: int, rounds: int) -> float:
    """The learning rate of round ``round_number`` (1-based) of a ``rounds``-round job."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; use one of {LR_SCHEDULES}")
    if schedule == "constant" or rounds <= 1:
        return lr
    progress = min(max(round_number - 1, 0), rounds) / rounds
    floor = lr * lr_min
    return floor + (lr - floor) * (1.0 + math.cos(math.pi * progress)) / 2.0
