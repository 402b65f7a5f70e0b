"""Import torch, ExecuTorch and PocketTune's model code once, from one thread at a time.

These imports take ~10 s and ExecuTorch's packages import each other circularly: two threads
importing them at once can deadlock in Python's per-module import locks (``_DeadlockError``)
and leave ``executorch.exir`` half-initialized for the life of the process. Every code path
that really runs the model stack (exporting an artifact, evaluating an adapter, validating a
job's model and task) calls :func:`ensure_heavy_imports` first; the background warm-up calls it
at start, so requests normally find everything loaded. Storing and serving adapters does not
need them (``models.adapter_codec`` writes both encodings from numpy).
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_DONE = False


def ensure_heavy_imports() -> None:
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if _DONE:
            return
        import safetensors.numpy  # noqa: F401
        import torch  # noqa: F401
        from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer  # noqa: F401

        import export.executorch  # noqa: F401
        import export.manifest  # noqa: F401
        import export.pipeline  # noqa: F401
        import models.registry  # noqa: F401
        import models.tasks  # noqa: F401
        import models.tier  # noqa: F401
        _DONE = True
