"""The ExecuTorch format: a ``.pte`` training program, its LoRA weights in a ``.ptd`` beside it.

The program takes every optimizer setting at run time, so any tier compiles and the artifact's
key is the compiled tier alone. A round's start adapter ships as a new ``.ptd`` (kilobytes),
never a new program. Tiers with ``prefix_cache`` add ``prefix.pte``, the frozen layers below
the lowest LoRA layer, which devices run once per example. The compiler is
:mod:`export.executorch`; the device runtime :mod:`fleet.runtimes.executorch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from export.formats.base import ArtifactFormat, ExportStageCallback, package_versions, precision_of, register
from models.adapter_codec import ptd_bytes

if TYPE_CHECKING:
    import numpy as np

    from export.pipeline import TrainingModel

#: Graph-pass counts of the compiler's report that the manifest keeps.
_PASS_REPORT_KEYS = ("empty_permuted_rewritten", "double_transposes_folded", "frozen_matmuls_to_linear",
                     "backward_frozen_weights")
#: The toolchain whose versions the manifest records.
_TOOLCHAIN = ("torch", "executorch", "transformers", "peft", "torchao")


@register
class ExecuTorchFormat(ArtifactFormat):
    name = "executorch"
    summary = ".pte training program"
    stages = ("load", "prune", "lora", "quantize", "prefix_export", "prefix_lower", "prefix_to_executorch",
              "export", "forward_backward", "lower", "to_executorch", "write", "manifest")
    start_adapter_kind = "ptd"

    def build(self, training: TrainingModel, out_dir: Path, options: Mapping[str, object],
              on_stage: ExportStageCallback) -> dict:
        from export.executorch import export_training_program

        tier = training.tier
        first_trained_layer = training.layout.first_layer if tier.prefix_cache else None
        return export_training_program(training.peft_model, tier.batch, tier.seq, out_dir, kernels=tier.kernels,
                                       first_trained_layer=first_trained_layer, loss_positions=tier.loss_positions,
                                       on_stage=on_stage, program_cache=options.get("program_cache"))

    def device_files(self, options: Mapping[str, object]) -> set[str]:
        from export.executorch import ADAPTER_DATA_FILE, PREFIX_PROGRAM_FILE, PROGRAM_FILE

        return {PROGRAM_FILE, PREFIX_PROGRAM_FILE, ADAPTER_DATA_FILE}

    def manifest_sections(self, training: TrainingModel, report: dict) -> dict:
        """The programs (inputs, outputs, label-position head), the prefix program, the lowering report."""
        from export.executorch import ADAPTER_DATA_FILE, PREFIX_PROGRAM_FILE, PROGRAM_FILE
        from export.manifest import loss_output
        from models.batching import IGNORE_INDEX

        tier = training.tier
        hidden_size = training.peft_model.get_base_model().config.hidden_size
        return {
            "format": self.name,
            "program": {
                "file": PROGRAM_FILE,
                "method": "forward",
                "kernels": tier.kernels,
                "inputs": [
                    {"name": "hidden", "shape": [tier.batch, tier.seq, hidden_size], "dtype": "float32",
                     "source": f"{PREFIX_PROGRAM_FILE} output"} if tier.prefix_cache else
                    {"name": "ids", "shape": [tier.batch, tier.seq], "dtype": "int64"},
                    {"name": "labels", "shape": [tier.batch, tier.seq], "dtype": "int64",
                     "ignore_index": IGNORE_INDEX},
                ],
                "outputs": [loss_output(tier.loss_positions)],
                # The label-position head (models.tier.Tier.loss_positions): trainers refuse batches
                # with a row labelled at more positions (models.batching.check_loss_positions).
                "loss_positions": tier.loss_positions,
                "trainable_data_file": ADAPTER_DATA_FILE,
            },
            "prefix": _prefix_section(training, hidden_size, PREFIX_PROGRAM_FILE) if tier.prefix_cache else None,
            "export": {
                "stage_seconds": report["stage_seconds"],
                # A frozen prefix identical to one compiled for another tier was taken from the
                # exporter's program cache (export.executorch.prefix_program_key) instead.
                "prefix_reused": bool((report.get("prefix") or {}).get("reused")),
                "graph_passes": {key: report[key] for key in _PASS_REPORT_KEYS if key in report},
                "delegate_calls": report["delegate_calls"],
                "planned_memory_bytes": report["planned_memory_bytes"],
                "versions": package_versions(_TOOLCHAIN),
            },
        }

    def initial_start_adapter(self, manifest: Mapping) -> str:
        return manifest["program"]["trainable_data_file"]

    def encode_start_adapter(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        return ptd_bytes(tensors)

    def program_kind(self, tier: Mapping) -> str:
        """``executorch-<kernels>-<precision>``: XNNPACK and the portable kernels differ several-fold."""
        return f"{self.name}-{tier.get('kernels', 'xnnpack')}-{precision_of(tier)}"

    def program_kinds(self) -> dict[str, dict]:
        from models.tier import KERNELS

        return {self.program_kind({"kernels": kernels, "quantize": quantize}): {"kernels": kernels, "quantize": quantize}
                for kernels in KERNELS for quantize in ("none", "int8")}


def _prefix_section(training: TrainingModel, hidden_size: int, prefix_file: str) -> dict:
    """What a device needs to run and cache the frozen prefix (tiers with ``prefix_cache``)."""
    tier = training.tier
    return {
        "file": prefix_file,
        "method": "forward",
        "first_trained_layer": training.layout.first_layer,
        "inputs": [{"name": "ids", "shape": [tier.batch, tier.seq], "dtype": "int64"}],
        "outputs": [{"name": "hidden", "shape": [tier.batch, tier.seq, hidden_size], "dtype": "float32",
                     "meaning": f"input of decoder layer {training.layout.first_layer}"}],
        "cache_bytes_per_example": tier.seq * hidden_size * 4,
        "cache_key": "sha256 of prefix.pte and of the example's token ids: valid while the base model is",
    }
