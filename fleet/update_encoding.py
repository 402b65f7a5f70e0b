"""The device's side of update encodings: the change sent in the job's encoding, and the
residual a lossy encoding did not send, kept for the next task of the same job (error feedback).

For ``topk`` the residual is what matters (without it, 90% of each change would be lost for
good at fraction 0.1); for the quantizing encodings it carries the rounding error forward.
The residual is kept per job in the device's state folder and dropped when the tier's tensors
change (another tier's task).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from models.update_codecs import UpdateCodec


def _numpy(tensors: Mapping) -> dict[str, np.ndarray]:
    return {key: (value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value))
            for key, value in tensors.items()}


def encode_update(trained: Mapping, start: Mapping, codec: UpdateCodec, residual_path: Path | None) -> bytes:
    """The upload's bytes: ``trained - start`` (+ the residual kept at ``residual_path``) in
    ``codec``'s encoding, as safetensors; the new residual is written back to ``residual_path``."""
    from safetensors.numpy import load_file, save, save_file

    trained, start = _numpy(trained), _numpy(start)
    change = {key: trained[key].astype(np.float64) - start[key].astype(np.float64) for key in trained}
    residual = {}
    if residual_path is not None and residual_path.exists():
        residual = load_file(str(residual_path))
        if set(residual) != set(change) or any(residual[k].shape != change[k].shape for k in change):
            residual = {}       # another tier's tensors: nothing to carry over
    wanted = {key: value + residual.get(key, 0.0) for key, value in change.items()}
    encoded = codec.encode(wanted)
    specs = [{"name": key, "shape": list(value.shape)} for key, value in wanted.items()]
    sent = codec.decode(encoded, specs)
    if residual_path is not None:
        residual_path.parent.mkdir(parents=True, exist_ok=True)
        save_file({key: (wanted[key] - sent[key]).astype(np.float32) for key in wanted}, str(residual_path))
    return save({key: np.ascontiguousarray(value) for key, value in sorted(encoded.items())},
                metadata={"format": "pt", "encoding": codec.name})
