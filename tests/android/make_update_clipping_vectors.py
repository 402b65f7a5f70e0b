"""Writes tests/protocol/update_clipping.json: update-clipping cases computed by the Python device's
arithmetic (models/update_privacy.py), which the Android core's UpdateClipping must reproduce
(UpdateClippingTest.java) and the Python side re-checks (test_update_clipping_vectors.py).

    python tests/android/make_update_clipping_vectors.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.update_privacy import clip_update

OUT = Path(__file__).resolve().parents[1] / "protocol" / "update_clipping.json"


def cases() -> list[dict]:
    rng = np.random.default_rng(20261208)
    made = []
    for name, clip_norm, scale in (("clipped", 0.05, 0.1), ("left_as_is", 10.0, 0.01), ("tiny_clip", 1e-4, 1.0)):
        start = {"a": rng.standard_normal((2, 3)).astype(np.float32), "b": rng.standard_normal((3, 2)).astype(np.float32)}
        trained = {k: (v + scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in start.items()}
        clipped, norm = clip_update(trained, start, clip_norm)
        made.append({"name": name, "clip_norm": clip_norm, "norm_before": norm,
                     "tensors": [{"name": k, "shape": list(start[k].shape), "start": start[k].ravel().tolist(),
                                  "trained": trained[k].ravel().tolist(), "clipped": clipped[k].ravel().tolist()}
                                 for k in sorted(start)]})
    return made


if __name__ == "__main__":
    OUT.write_text(json.dumps({"about": "models/update_privacy.clip_update cases (float32 values as decimals); "
                                        "made by tests/android/make_update_clipping_vectors.py",
                               "cases": cases()}, indent=1) + "\n")
    print(f"wrote {OUT}")
