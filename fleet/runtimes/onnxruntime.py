"""The ONNX Runtime runtime: ``onnxruntime.training.api`` (the onnxruntime-training-cpu 1.19.2 build).

Trains ``onnxruntime`` artifacts (:mod:`export.formats.onnxruntime`) with
:class:`fleet.runtime_onnxruntime.OnnxRuntimeTrainer`: the start adapter is PEFT safetensors,
written into the checkpoint state, and the optimizer is the one compiled into the artifact, so
a task asking for another one is refused before anything loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.runtimes.base import Runtime, Trainer, register

if TYPE_CHECKING:
    from fleet.prefix_cache import PrefixCache


@register
class OnnxRuntimeRuntime(Runtime):
    name = "onnxruntime"

    def settings_mismatch(self, manifest: Mapping, train: Mapping) -> str | None:
        compiled = manifest["program"]["optimizer"]["optimizer"]
        requested = train.get("optimizer", "sgd")
        if requested != compiled:
            return f"the training settings say optimizer {requested!r}, the artifact compiled {compiled!r}"
        return None

    def trainer(self, artifact_dir: Path, manifest: Mapping, start_adapter: Path, train: Mapping, *,
                threads: int | None = None, cache_dir: Path | None = None,
                prefix_cache: PrefixCache | None = None) -> Trainer:
        """ONNX Runtime artifacts have no prefix program: ``cache_dir`` and ``prefix_cache`` do not apply."""
        from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter

        session = {} if threads is None else {"threads": threads}
        return OnnxRuntimeTrainer(artifact_dir, manifest, read_start_adapter(start_adapter), lr=train["lr"],
                                  **session)
