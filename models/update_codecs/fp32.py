"""``fp32``: the trained tensors themselves, float32 (the protocol's original form)."""

from __future__ import annotations

import numpy as np

from models.update_codecs.base import UpdateCodec, register


@register
class Float32(UpdateCodec):
    name = "fp32"
    sends_change = False
    lossless = True

    def entries(self, specs):
        return {spec["name"]: ("F32", tuple(spec["shape"])) for spec in specs}

    def encode(self, change):
        raise TypeError("fp32 uploads carry the trained values: the device saves them as they are")

    def decode(self, arrays, specs):
        return {spec["name"]: np.asarray(arrays[spec["name"]], dtype=np.float32) for spec in specs}
