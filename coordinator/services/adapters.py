"""Global adapters as blobs: the PEFT directory (config + safetensors) and the device ``.ptd``.

Round ``N``'s global adapter is stored three ways, all content-addressed:
``adapter_config.json`` and ``adapter_model.safetensors`` (what ``PeftModel.from_pretrained``
loads; served as a zip by ``GET /api/v1/jobs/<id>/adapter?round=N``) and ``lora.ptd`` (the same
tensors in ExecuTorch's flat-tensor format, which devices load beside the ``.pte``). Round 0
is the artifact's own ``initial_adapter/`` and ``lora.ptd``, exactly as exported.

Both encodings are written by :mod:`models.adapter_codec`, bytes from numpy arrays, the very
bytes the exporter writes: publishing an adapter needs neither torch nor ExecuTorch nor a
temporary file, so closing a round never waits for the heavy imports.
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from coordinator.storage import BlobRef, BlobStore
from models.adapter_codec import ptd_bytes, safetensors_bytes, tensors_from_safetensors

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
_CACHED_ADAPTERS = 8


class AdapterStore:
    """Reads and writes global adapters in the blob store; keeps recent ones decoded in memory."""

    def __init__(self, blobs: BlobStore):
        self.blobs = blobs
        self._cache: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def tensors(self, weights_sha256: str) -> dict[str, np.ndarray]:
        """The tensors of a stored ``adapter_model.safetensors`` (read-only arrays, cached)."""
        with self._lock:
            if weights_sha256 in self._cache:
                self._cache.move_to_end(weights_sha256)
                return self._cache[weights_sha256]
        tensors = tensors_from_safetensors(self.blobs.read_bytes(weights_sha256))
        for array in tensors.values():
            array.setflags(write=False)
        with self._lock:
            self._cache[weights_sha256] = tensors
            while len(self._cache) > _CACHED_ADAPTERS:
                self._cache.popitem(last=False)
        return tensors

    def store(self, tensors: Mapping[str, np.ndarray]) -> tuple[BlobRef, BlobRef]:
        """Write ``tensors`` (PEFT-keyed, cast to float32) as a PEFT safetensors blob and a ``.ptd``
        blob; returns both refs."""
        # Cast first, as aggregation may hand over float64 (or, by mistake, integer) arrays: the
        # .ptd writer refuses non-float dtypes, and both blobs must hold the same float32 values.
        arrays = {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in tensors.items()}
        weights = self.blobs.put_bytes(safetensors_bytes(arrays))
        ptd = self.blobs.put_bytes(ptd_bytes(arrays))
        return weights, ptd

    def zip_bytes(self, config_sha256: str, weights_sha256: str) -> bytes:
        """A zip of a PEFT adapter directory (files at the top level: unzip into a folder and load it)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(ADAPTER_CONFIG_FILE, self.blobs.read_bytes(config_sha256))
            archive.writestr(ADAPTER_WEIGHTS_FILE, self.blobs.read_bytes(weights_sha256))
        return buffer.getvalue()

