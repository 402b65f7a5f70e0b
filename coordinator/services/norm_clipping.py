"""Bounding each update's length by the round's own update lengths, before aggregation.

A device's update is the change ``delta_i = T_i - S_i`` from the adapter it started from; its
length ``|delta_i|`` (L2 over all its tensors) is measured when the upload is validated
(``Update.delta_norm``). Honest devices of one round take a few steps from the same adapter,
so their lengths are of one order; a hostile or broken device's need not be, and under a
weighted mean a single very long update moves the global adapter wherever it points.

Devices of one heterogeneous round train tiers of different sizes (one LoRA layer at rank 2,
or eight at rank 8), so lengths are compared per trained element: ``rms_i = |delta_i| /
sqrt(n_i)``, with ``n_i`` the number of values in the device's own tier. At aggregation, with
``m`` the median ``rms`` of the round's updates and ``f`` the job's ``norm_clip_factor``, every
update whose ``rms`` exceeds ``f * m`` is scaled back to that::

    T_i' = S_i + min(1, f * m / rms_i) * delta_i

The bound follows from the lengths the round really saw, not from a constant: the median is
unmoved by any minority of outliers, and an update within ``f`` times it is left exactly as it
was (so for a round of ordinary updates aggregation is unchanged, to the bit). Rounds with fewer
than :data:`MIN_UPDATES` updates are not clipped (their median is no reference). The job's
``max_update_norm`` stays the absolute ceiling checked at upload.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import numpy as np

#: Fewest updates in a round for its median length to be a reference.
MIN_UPDATES = 3
#: Default ``norm_clip_factor`` of new jobs.
DEFAULT_FACTOR = 4.0


def clip_scales(norms: Sequence[float], sizes: Sequence[int], factor: float | None) -> list[float]:
    """Per update, the factor its change is multiplied by (1.0: left as it is).

    ``norms``: each update's ``|delta_i|``; ``sizes``: how many values its tier trains.
    """
    if factor is None or len(norms) < MIN_UPDATES:
        return [1.0] * len(norms)
    rms = [norm / math.sqrt(max(size, 1)) for norm, size in zip(norms, sizes)]
    bound = factor * statistics.median(rms)
    return [1.0 if value <= bound else bound / value for value in rms]


def scaled(tensors: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray], scale: float) -> dict[str, np.ndarray]:
    """``start + scale * (tensors - start)`` per tensor (float64 arithmetic, float32 out)."""
    if scale == 1.0:
        return dict(tensors)
    return {key: (np.asarray(start[key], dtype=np.float64)
                  + scale * (np.asarray(value, dtype=np.float64) - np.asarray(start[key], dtype=np.float64))
                  ).astype(np.float32)
            for key, value in tensors.items()}
