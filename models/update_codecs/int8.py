"""``int8`` and ``int8_tensor``: the change quantized symmetrically to int8 with float32 scales.

``int8`` keeps one scale per rank component: per row of a LoRA ``A`` (``[r, in]``) and per
column of a ``B`` (``[out, r]``), i.e. along the tensor's shorter axis, so the r components,
whose magnitudes differ by orders, keep their own resolution for 4r bytes of scales;
``int8_tensor`` keeps one scale per tensor. ``q = round(change / scale)`` with
``scale = max|slice| / 127``: the error per value is at most ``scale / 2``. A slice that did not
change has scale 0 and decodes to 0 exactly.
"""

from __future__ import annotations

import numpy as np

from models.update_codecs.base import UpdateCodec, register

SCALE_SUFFIX = ".scale"


class _Int8(UpdateCodec):
    per_component: bool

    def _axis(self, shape: tuple[int, ...]) -> int | None:
        """The axis with a scale per index (None: one scale for the tensor)."""
        if not self.per_component or not shape or min(shape) == 0:
            return None
        return int(np.argmin(shape))

    def _scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        axis = self._axis(shape)
        return (1,) if axis is None else (shape[axis],)

    def _slices(self, value: np.ndarray) -> np.ndarray:
        axis = self._axis(value.shape)
        return value.reshape(1, -1) if axis is None else np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)

    def _unslice(self, slices: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        axis = self._axis(shape)
        if axis is None:
            return slices.reshape(shape)
        moved = (shape[axis],) + tuple(d for i, d in enumerate(shape) if i != axis)
        return np.moveaxis(slices.reshape(moved), 0, axis)

    def entries(self, specs):
        out = {}
        for spec in specs:
            shape = tuple(spec["shape"])
            out[spec["name"]] = ("I8", shape)
            out[spec["name"] + SCALE_SUFFIX] = ("F32", self._scale_shape(shape))
        return out

    def encode(self, change):
        out = {}
        for key, value in change.items():
            value = np.asarray(value, dtype=np.float64)
            slices = self._slices(value)
            scale = np.abs(slices).max(axis=1) / 127.0 if slices.size else np.zeros(slices.shape[0])
            safe = np.where(scale > 0, scale, 1.0)
            quantized = np.clip(np.rint(slices / safe[:, None]), -127, 127).astype(np.int8)
            out[key] = np.ascontiguousarray(self._unslice(quantized, value.shape))
            out[key + SCALE_SUFFIX] = scale.astype(np.float32)
        return out

    def decode(self, arrays, specs):
        out = {}
        for spec in specs:
            shape = tuple(spec["shape"])
            scale = np.asarray(arrays[spec["name"] + SCALE_SUFFIX], dtype=np.float64)
            if not np.isfinite(scale).all() or (scale < 0).any():
                raise ValueError(f"{spec['name']}{SCALE_SUFFIX} must hold finite scales >= 0")
            slices = self._slices(np.asarray(arrays[spec["name"]], dtype=np.float64).reshape(shape))
            out[spec["name"]] = self._unslice(slices * scale[:, None], shape).astype(np.float32)
        return out


@register
class Int8PerComponent(_Int8):
    name = "int8"
    per_component = True


@register
class Int8PerTensor(_Int8):
    name = "int8_tensor"
    per_component = False
