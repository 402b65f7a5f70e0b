"""DP-FedAvg's aggregation: the mean of clipped changes, with the Gaussian noise of central DP.

``new = start + (sum_i clip(delta_i) + N(0, (z*C)^2 I)) / m``, with ``m`` the round's expected
number of devices (the job's ``devices_per_round``), not the number that arrived: a fixed
denominator keeps the sensitivity of the released value at ``C / m`` whether or not a given
device took part (McMahan et al. 2018's fixed-denominator estimator). Updates are not weighted
by their claimed example counts for the same reason. Under local DP the devices added the noise
(z = 0 here) and the same mean is taken.

The changes arrive already lifted into the job's layout (a device on a smaller tier changed
nothing outside its slice: zeros there), so clipping in the device's layout bounds the lifted
change too. The noise comes from the operating system's entropy (``numpy``'s generator seeded
from ``secrets``); floating-point attacks on Gaussian sampling (Mironov 2012) are not defended.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

import numpy as np


def private_mean(start: Mapping[str, np.ndarray], deltas: Sequence[Mapping[str, np.ndarray]], *,
                 clip_norm: float, noise_multiplier: float, denominator: int,
                 rng: np.random.Generator | None = None, check_norms: bool = True) -> dict[str, np.ndarray]:
    """``start + (sum of deltas + noise) / denominator`` per tensor (float64 sums, float32 out).

    ``deltas`` must be clipped to ``clip_norm`` already (each is checked: a longer one is a bug),
    except under local DP (``check_norms=False``), where they carry the devices' noise.
    """
    if denominator < 1:
        raise ValueError(f"denominator must be >= 1, got {denominator}")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    for index, delta in enumerate(deltas if check_norms else ()):
        norm = float(np.sqrt(sum(float(np.square(np.asarray(v, dtype=np.float64)).sum()) for v in delta.values())))
        if norm > clip_norm * (1 + 1e-6):
            raise ValueError(f"change {index} has norm {norm:.6g} > clip_norm {clip_norm:.6g}: clip before the mean")
    out = {}
    for key, value in start.items():
        total = np.zeros(np.shape(value), dtype=np.float64)
        for delta in deltas:
            if key in delta:
                total += np.asarray(delta[key], dtype=np.float64)
        if noise_multiplier > 0:
            total += rng.normal(0.0, noise_multiplier * clip_norm, size=total.shape)
        out[key] = (np.asarray(value, dtype=np.float64) + total / denominator).astype(np.float32)
    return out


def clipped_delta(tensors: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray],
                  clip_norm: float) -> tuple[dict[str, np.ndarray], bool]:
    """``clip(tensors - start)`` to ``clip_norm`` in float64, and whether it had to be scaled (the
    device's own clipping leaves it within C, so only float rounding or a lying device scales)."""
    delta = {key: np.asarray(value, dtype=np.float64) - np.asarray(start[key], dtype=np.float64)
             for key, value in tensors.items()}
    norm = float(np.sqrt(sum(float(np.square(v).sum()) for v in delta.values())))
    if norm <= clip_norm:
        return delta, False
    scale = clip_norm / norm
    return {key: value * scale for key, value in delta.items()}, True
