"""``topk``: of each tensor's change, only the ``fraction`` of values largest in magnitude, as
(int32 flat index, float32 value) pairs; the rest is zero on arrival.

The device keeps what it did not send (the residual) and adds it to its next change (error
feedback, as in Stich et al. 2018 and FLASC-style sparse LoRA uploads), so nothing is lost, only
delayed. Not compatible with secure aggregation: each device sends different indices.
"""

from __future__ import annotations

import math

import numpy as np

from models.update_codecs.base import UpdateCodec, register

INDICES, VALUES = ".indices", ".values"


def kept(numel: int, fraction: float) -> int:
    """Values kept of a tensor of ``numel`` values (at least one, at most all)."""
    return min(numel, max(1, math.ceil(fraction * numel))) if numel else 0


@register
class TopK(UpdateCodec):
    name = "topk"

    def __init__(self, fraction: float = 0.1):
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise ValueError(f"topk's fraction must be a number in (0, 1], got {fraction!r}")
        self.fraction = float(fraction)

    def options(self):
        return {"fraction": self.fraction}

    def entries(self, specs):
        out = {}
        for spec in specs:
            k = kept(math.prod(spec["shape"]), self.fraction)
            out[spec["name"] + INDICES] = ("I32", (k,))
            out[spec["name"] + VALUES] = ("F32", (k,))
        return out

    def encode(self, change):
        out = {}
        for key, value in change.items():
            flat = np.asarray(value, dtype=np.float64).ravel()
            k = kept(flat.size, self.fraction)
            top = np.argpartition(-np.abs(flat), k - 1)[:k] if k < flat.size else np.arange(flat.size)
            top = np.sort(top)
            out[key + INDICES] = top.astype(np.int32)
            out[key + VALUES] = flat[top].astype(np.float32)
        return out

    def decode(self, arrays, specs):
        out = {}
        for spec in specs:
            numel = math.prod(spec["shape"])
            indices = np.asarray(arrays[spec["name"] + INDICES], dtype=np.int64)
            if indices.size and (indices.min() < 0 or indices.max() >= numel):
                raise ValueError(f"{spec['name']}{INDICES} holds an index outside [0, {numel})")
            if np.unique(indices).size != indices.size:
                raise ValueError(f"{spec['name']}{INDICES} names a value twice")
            flat = np.zeros(numel, dtype=np.float32)
            flat[indices] = np.asarray(arrays[spec["name"] + VALUES], dtype=np.float32)
            out[spec["name"]] = flat.reshape(spec["shape"])
        return out
