"""``fp16``: the change from the start adapter in half precision (half the bytes of fp32)."""

from __future__ import annotations

import numpy as np

from models.update_codecs.base import UpdateCodec, register


@register
class Float16(UpdateCodec):
    name = "fp16"

    def entries(self, specs):
        return {spec["name"]: ("F16", tuple(spec["shape"])) for spec in specs}

    def encode(self, change):
        return {key: np.asarray(value, dtype=np.float64).astype(np.float16) for key, value in change.items()}

    def decode(self, arrays, specs):
        return {spec["name"]: np.asarray(arrays[spec["name"]]).astype(np.float32) for spec in specs}
