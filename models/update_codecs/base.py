"""How a device's update travels: one codec per wire encoding, behind a small interface.

A LoRA update is sent as one safetensors file. The ``fp32`` codec sends the trained tensors
themselves (what every device sent before encodings existed); the others send the *change*
from the start adapter, smaller: ``fp16``, ``int8`` (symmetric, a float32 scale per row),
``int8_tensor`` (one scale per tensor) and ``topk`` (the largest-magnitude fraction of each
tensor's values with their indices; the device keeps what it did not send and adds it to its
next change: error feedback).

A codec knows, from the manifest's tensor specs alone, exactly which safetensors entries (name,
dtype, shape) a valid upload holds, so the coordinator refuses anything else before decoding.
Decoding gives the change as float32 arrays of the specs' shapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from models.plugin_registry import Registry

#: safetensors dtype names of the numpy dtypes codecs use.
DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
               np.dtype(np.int32): "I32"}


class UpdateCodec(ABC):
    """One wire encoding of an update. Instances carry the job's options (``topk``'s fraction)."""

    name: ClassVar[str]
    #: False only for ``fp32``: the upload holds the trained values, not the change.
    sends_change: ClassVar[bool] = True
    #: Whether what arrives equals what was trained (fp32) or approximates it.
    lossless: ClassVar[bool] = False

    def __init__(self, **options):
        if options:
            raise ValueError(f"the {self.name} encoding takes no options, got {sorted(options)}")

    def options(self) -> dict:
        """The options as a job stores them (``{"name": ..., **options}`` is the job's setting)."""
        return {}

    @abstractmethod
    def entries(self, specs: Sequence[Mapping]) -> dict[str, tuple[str, tuple[int, ...]]]:
        """The safetensors entries of a valid upload: name -> (dtype name, shape)."""

    @abstractmethod
    def encode(self, change: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays to send for ``change`` (float arrays of the specs' shapes)."""

    @abstractmethod
    def decode(self, arrays: Mapping[str, np.ndarray], specs: Sequence[Mapping]) -> dict[str, np.ndarray]:
        """The change (float32, the specs' shapes) from arrays of :meth:`entries`' form."""

    def wire_bytes(self, specs: Sequence[Mapping]) -> int:
        """The tensors' bytes of an upload (headers aside)."""
        return sum(int(np.prod(shape)) * _itemsize(dtype) for dtype, shape in self.entries(specs).values())


def _itemsize(dtype: str) -> int:
    return {"F32": 4, "F16": 2, "I8": 1, "I32": 4}[dtype]


#: Every update codec, by the name a job sets (``update_encoding.name``).
CODECS: Registry[UpdateCodec] = Registry("update encoding", unknown_error=ValueError)
register = CODECS.register


def codec_names() -> list[str]:
    return CODECS.names()


def get_codec(setting: Mapping | None) -> UpdateCodec:
    """The codec a job's ``update_encoding`` setting names (None: ``fp32``), with its options."""
    setting = dict(setting or {"name": "fp32"})
    name = setting.pop("name", None)
    return CODECS.get(name, **setting)
