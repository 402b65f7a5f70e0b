"""Global adapters as blobs: the PEFT directory (config + safetensors) and the device ``.ptd``.

Round ``N``'s global adapter is stored three ways, all content-addressed:
``adapter_config.json`` and ``adapter_model.safetensors`` (what ``PeftModel.from_pretrained``
loads; served as a zip by ``GET /api/v1/jobs/<id>/adapter?round=N``) and ``lora.ptd`` (the same
tensors in ExecuTorch's flat-tensor format, which devices load beside the ``.pte``). Round 0
is the artifact's own ``initial_adapter/`` and ``lora.ptd``, exactly as exported.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from coordinator.services.heavy_imports import ensure_heavy_imports
from coordinator.storage import BlobRef, BlobStore

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
        from safetensors.numpy import load

        tensors = load(self.blobs.read_bytes(weights_sha256))
        for array in tensors.values():
            array.setflags(write=False)
        with self._lock:
            self._cache[weights_sha256] = tensors
            while len(self._cache) > _CACHED_ADAPTERS:
                self._cache.popitem(last=False)
        return tensors

    def store(self, tensors: Mapping[str, np.ndarray]) -> tuple[BlobRef, BlobRef]:
        """Write ``tensors`` as a PEFT safetensors blob and a ``.ptd`` blob; returns both refs."""
        from safetensors.numpy import save

        ordered = {key: np.ascontiguousarray(tensors[key], dtype=np.float32) for key in sorted(tensors)}
        weights = self.blobs.put_bytes(save(ordered, metadata={"format": "pt"}))
        ptd = self.blobs.put_bytes(ptd_bytes(ordered))
        return weights, ptd

    def zip_bytes(self, config_sha256: str, weights_sha256: str) -> bytes:
        """A zip of a PEFT adapter directory (files at the top level: unzip into a folder and load it)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(ADAPTER_CONFIG_FILE, self.blobs.read_bytes(config_sha256))
            archive.writestr(ADAPTER_WEIGHTS_FILE, self.blobs.read_bytes(weights_sha256))
        return buffer.getvalue()


def ptd_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """The ExecuTorch ``.ptd`` of PEFT-keyed float32 tensors, through ``export.executorch``."""
    ensure_heavy_imports()
    import torch

    from export.executorch import write_adapter_ptd

    fd, name = tempfile.mkstemp(suffix=".ptd")
    os.close(fd)
    try:
        write_adapter_ptd({key: torch.from_numpy(np.array(value, dtype=np.float32)) for key, value in tensors.items()},
                          Path(name))
        return Path(name).read_bytes()
    finally:
        os.unlink(name)
