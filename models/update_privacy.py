"""Client-level differential privacy on an adapter update: clipping, and the device's own noise.

A device's update is the change ``delta = trained - start`` from the adapter it was given.
Client-level DP (DP-FedAvg, McMahan et al. 2018) bounds what any one device can move the
global adapter by: every ``delta`` is scaled to L2 norm at most ``C`` (the job's
``clip_norm``) before it leaves the device, so the sum over devices changes by at most ``C``
when one device joins or leaves; Gaussian noise of standard deviation ``z * C`` (``z``: the
noise multiplier) then hides which one did. The noise is added to the sum by the coordinator
(central DP: the server is trusted with single updates) or to each update by the device
itself (local DP: it is not).

This module is the arithmetic both sides share: the device clips (and, under local DP, adds
its noise) with it, and the coordinator checks a received update against the same bound.
Arithmetic is float64; tensors go out float32, as uploads are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

#: A clipped update's norm is brought to at most ``C * (1 - CLIP_MARGIN)`` so that float32
#: rounding of ``start + delta`` cannot push the norm the server recomputes past ``C``.
CLIP_MARGIN = 1e-5
#: How far past ``C`` a received update's recomputed norm may be before it is refused (float32
#: rounding of large start values; far below any change a device could gain from).
SERVER_TOLERANCE = 1e-3
#: Under local DP the upload carries the device's noise, so the server cannot check the clip;
#: it refuses what even noise could not explain: ``C + z*C*(sqrt(n) + NOISE_TAIL_SIGMAS)``. The
#: L2 norm of ``n`` standard normals exceeds ``sqrt(n) + t`` with probability below
#: ``exp(-t^2/2)`` (Gaussian concentration of a 1-Lipschitz function): 1.5e-8 for t = 6.
NOISE_TAIL_SIGMAS = 6.0


def delta_norm(trained: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``trained - start`` over every tensor."""
    squared = 0.0
    for key, value in trained.items():
        delta = np.asarray(value, dtype=np.float64) - np.asarray(start[key], dtype=np.float64)
        squared += float(np.dot(delta.ravel(), delta.ravel()))
    return math.sqrt(squared)


def clip_update(trained: Mapping[str, np.ndarray], start: Mapping[str, np.ndarray], clip_norm: float,
                noise_multiplier: float = 0.0, rng: np.random.Generator | None = None
                ) -> tuple[dict[str, np.ndarray], float]:
    """``start + clip(trained - start)`` (+ the device's noise), and the unclipped change's norm.

    The change is scaled by ``min(1, C / |delta|)`` (shrunk by :data:`CLIP_MARGIN`); with
    ``noise_multiplier`` z > 0 (local DP) Gaussian noise of standard deviation ``z * C`` is added
    to every value of the clipped change. ``rng`` must be unpredictable to the server when noise
    is added (the default draws its seed from the operating system).
    """
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    if noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
    norm = delta_norm(trained, start)
    bound = clip_norm * (1.0 - CLIP_MARGIN)
    scale = 1.0 if norm <= bound else bound / norm
    if noise_multiplier > 0 and rng is None:
        rng = np.random.default_rng()
    out = {}
    for key, value in trained.items():
        base = np.asarray(start[key], dtype=np.float64)
        delta = (np.asarray(value, dtype=np.float64) - base) * scale
        if noise_multiplier > 0:
            delta = delta + rng.normal(0.0, noise_multiplier * clip_norm, size=delta.shape)
        out[key] = (base + delta).astype(np.float32)
    return out, norm


def server_norm_bound(clip_norm: float, noise_multiplier: float, num_values: int, *, local_noise: bool) -> float:
    """The longest change the coordinator accepts from a device of a DP job.

    Central DP: ``C`` (plus :data:`SERVER_TOLERANCE`): the device clipped it, or it is refused.
    Local DP: the clipped change plus the device's noise, at most
    ``C + z*C*(sqrt(n) + NOISE_TAIL_SIGMAS)`` for ``n`` values (see :data:`NOISE_TAIL_SIGMAS`).
    """
    if not local_noise:
        return clip_norm * (1.0 + SERVER_TOLERANCE)
    return clip_norm * (1.0 + SERVER_TOLERANCE) + noise_multiplier * clip_norm * (
        math.sqrt(max(num_values, 0)) + NOISE_TAIL_SIGMAS)


class UpdatePrivacy:
    """A task's ``train.privacy`` section, as the device reads it: clip to ``clip_norm``; with
    ``noise_multiplier`` > 0 (local DP) add the noise too."""

    def __init__(self, clip_norm: float, noise_multiplier: float = 0.0):
        if isinstance(clip_norm, bool) or not isinstance(clip_norm, (int, float)) or not math.isfinite(clip_norm) \
                or clip_norm <= 0:
            raise ValueError(f"clip_norm must be a positive number, got {clip_norm!r}")
        if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) \
                or not math.isfinite(noise_multiplier) or noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be a number >= 0, got {noise_multiplier!r}")
        self.clip_norm, self.noise_multiplier = float(clip_norm), float(noise_multiplier)

    @classmethod
    def from_train(cls, train: dict) -> "UpdatePrivacy | None":
        section = train.get("privacy")
        if section is None:
            return None
        if not isinstance(section, dict) or set(section) - {"clip_norm", "noise_multiplier"}:
            raise ValueError(f"train.privacy must be an object of clip_norm and noise_multiplier, got {section!r}")
        return cls(section.get("clip_norm"), section.get("noise_multiplier", 0.0))


def privatize(trained: Mapping, start: Mapping, privacy: UpdatePrivacy) -> tuple[dict, float]:
    """The device's step before upload: ``trained`` (torch tensors under the adapter's keys)
    with its change from ``start`` clipped (and noised under local DP), as torch tensors; and
    the change's norm before clipping (kept on the device: it is not covered by the guarantee)."""
    import torch

    arrays = {key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
              for key, value in trained.items()}
    starts = {key: (start[key].detach().cpu().numpy() if hasattr(start[key], "detach") else np.asarray(start[key]))
              for key in arrays}
    clipped, norm = clip_update(arrays, starts, privacy.clip_norm, privacy.noise_multiplier)
    return {key: torch.from_numpy(value) for key, value in clipped.items()}, norm
