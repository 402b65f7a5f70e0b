"""The ONNX Runtime format: training, eval and optimizer models and a checkpoint (onnxruntime-training).

For phones that ship ONNX Runtime rather than ExecuTorch, compiled from the very same eager
model. Two differences the rest of the system sees through this plug-in: the optimizer is
compiled in (so a tier whose SGD has momentum or weight decay is refused, and the compiled
optimizer settings are part of the artifact's key), and a round's start adapter ships as PEFT
safetensors, the form every update comes back in. There is no prefix program and no kernel
choice. The compiler is :mod:`export.onnxruntime`; the device runtime
:mod:`fleet.runtimes.onnxruntime`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from export.formats.base import ArtifactFormat, ExportStageCallback, package_versions, precision_of, register
from export.onnxruntime_optimizer import check_training_hyperparameters, compiled_optimizer
from models.adapter_codec import safetensors_bytes

if TYPE_CHECKING:
    import numpy as np

    from export.pipeline import TrainingModel
    from models.tier import TrainingHyperparameters

#: The toolchain whose versions the manifest records, before the ONNX packages (``versions()``).
_TOOLCHAIN = ("torch", "transformers", "peft", "torchao")


@register
class OnnxRuntimeFormat(ArtifactFormat):
    name = "onnxruntime"
    summary = ("ONNX Runtime training artifacts for onnxruntime-training 1.19.2 (no prefix program; "
               "--kernels does not apply)")
    stages = ("load", "prune", "lora", "quantize", "onnx_export", "training_artifacts", "ort_format", "manifest")
    #: ``ort_format``: also write the models in ``.ort`` format (minimal mobile builds).
    export_options = frozenset({"ort_format"})
    start_adapter_kind = "safetensors"

    def unsupported(self, tier: Mapping) -> str | None:
        """A tier whose optimizer settings the compiled optimizers cannot honour (SGD with momentum
        or weight decay), or whose settings are invalid to begin with."""
        try:
            check_training_hyperparameters(_training_settings(tier))
        except ValueError as exc:
            return str(exc)
        return None

    def artifact_key_extras(self, tier: Mapping) -> dict:
        return {"optimizer": compiled_optimizer(_training_settings(tier))}

    def build(self, training: TrainingModel, out_dir: Path, options: Mapping[str, object],
              on_stage: ExportStageCallback) -> dict:
        from export.onnxruntime import export_onnxruntime_artifacts

        return export_onnxruntime_artifacts(training.peft_model, training.tier, out_dir,
                                            ort_format=bool(options.get("ort_format", False)), on_stage=on_stage)

    def device_files(self, options: Mapping[str, object]) -> set[str]:
        from export.onnxruntime import device_files

        return device_files(bool(options.get("ort_format", False)))

    def manifest_sections(self, training: TrainingModel, report: dict) -> dict:
        """The models, inputs, compiled optimizer and session settings; no prefix program (ONNX Runtime
        artifacts train the whole model, there is nothing to cache)."""
        from export.onnxruntime import program_section, versions

        return {"format": self.name, "program": program_section(training.tier, report), "prefix": None,
                "export": {"stage_seconds": report["stage_seconds"],
                           "versions": {**package_versions(_TOOLCHAIN), **versions()},
                           "int8_frozen_weights": report["int8_frozen_weights"],
                           "trainable_tensors": report["trainable_tensors"]}}

    def initial_start_adapter(self, manifest: Mapping) -> str:
        from models.adapters import ADAPTER_WEIGHTS_FILE

        return f"{manifest['lora']['initial_adapter_dir']}/{ADAPTER_WEIGHTS_FILE}"

    def encode_start_adapter(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        return safetensors_bytes(tensors)

    def program_kind(self, tier: Mapping) -> str:
        """``onnxruntime-<precision>``: ONNX Runtime has no kernel choice."""
        return f"{self.name}-{precision_of(tier)}"

    def program_kinds(self) -> dict[str, dict]:
        return {self.program_kind({"quantize": quantize}): {"quantize": quantize} for quantize in ("none", "int8")}


def _training_settings(tier: Mapping) -> TrainingHyperparameters:
    """The training settings of a tier dict, as the tier reads them (defaults filled in)."""
    from models.tier import Tier

    return Tier.from_dict(dict(tier)).train
