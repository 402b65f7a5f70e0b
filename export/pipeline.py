"""(base model, tier) -> a directory of device training artifacts, written all or nothing.

Order matters: prune the fp32 base (importance scores need real activations), attach LoRA
(its shapes follow the pruned widths), quantize only the frozen base, then compile. The
output directory appears only once every file and the manifest are complete: everything is
staged in a hidden sibling directory and renamed into place, so a crash or a bad argument
never leaves a half-written artifact that a coordinator could pick up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from export.executorch import (ADAPTER_DATA_FILE, PREFIX_PROGRAM_FILE, PROGRAM_FILE, export_training_program,
                               trainable_adapter_tensors)
from export.manifest import describe_files, loss_output, write_manifest
from models.adapters import peft_config_dict, save_adapter
from models.batching import IGNORE_INDEX, pad_token_id
from models.lora import LoraLayout, apply_lora, resolve_layout
from models.pruning import calibration_ids, prune_model
from models.quantize import quantize_frozen_base
from models.registry import BaseModel, load_base_model
from models.tier import Tier

ARTIFACT_FORMAT = "executorch"
#: Artifact formats, one per on-device training runtime: ExecuTorch (``export/executorch.py``) and
#: ONNX Runtime training (``export/onnxruntime.py``).
FORMATS = ("executorch", "onnxruntime")
TOKENIZER_DIR = "tokenizer"
INITIAL_ADAPTER_DIR = "initial_adapter"
PRUNED_BASE_DIR = "pruned_base"
DEVICE_FILES = {PROGRAM_FILE, PREFIX_PROGRAM_FILE, ADAPTER_DATA_FILE, TOKENIZER_DIR}
_VERSIONED_PACKAGES = ("torch", "executorch", "transformers", "peft", "torchao")

STAGES = ("load", "prune", "lora", "quantize", "prefix_export", "prefix_lower", "prefix_to_executorch",
          "export", "forward_backward", "lower", "to_executorch", "write", "manifest")
#: The stages of an ``onnxruntime`` export, in order (the progress bar's steps).
ONNXRUNTIME_STAGES = ("load", "prune", "lora", "quantize", "onnx_export", "training_artifacts", "ort_format",
                      "manifest")


def stages_of(artifact_format: str) -> tuple[str, ...]:
    """The progress stages an export in ``artifact_format`` reports, in order."""
    check_format(artifact_format)
    return STAGES if artifact_format == "executorch" else ONNXRUNTIME_STAGES


def check_format(artifact_format: str) -> None:
    if artifact_format not in FORMATS:
        raise ValueError(f"unknown artifact format {artifact_format!r}; use one of {', '.join(FORMATS)}")


@dataclass
class TrainingModel:
    """The eager model an artifact is compiled from, and how it was derived from its base."""

    base: BaseModel
    tier: Tier
    peft_model: torch.nn.Module
    layout: LoraLayout
    prune_report: dict


def build_training_model(base: BaseModel, tier: Tier, on_stage=None,
                         pruned_base_dir: Path | None = None) -> TrainingModel:
    """Prune, attach LoRA and quantize ``base`` as ``tier`` says (mutates ``base.model``).

    With ``pruned_base_dir``, a pruned base is also saved there (fp32, before LoRA and
    quantization) so the server can evaluate and merge adapters on exactly that model.
    """
    notify = on_stage or (lambda stage: None)
    tier.validate(base.config.num_hidden_layers)
    notify("prune")
    calibration = calibration_ids(base.tokenizer) if tier.prune_ratio > 0 else None
    prune_report = prune_model(base.model, tier.pruning, calibration)
    if pruned_base_dir is not None and tier.prune_ratio > 0:
        base.model.save_pretrained(pruned_base_dir, safe_serialization=True)
    depth = base.model.config.num_hidden_layers
    if tier.lora_layers > depth:
        raise ValueError(f"{tier.lora_layers} LoRA layers requested but the pruned model keeps only {depth} layers")
    notify("lora")
    layout = resolve_layout(depth, tier.lora_rank, tier.lora_layers, tier.rank_pattern, tier.lora_targets)
    peft_model = apply_lora(base.model, layout)
    notify("quantize")
    quantize_frozen_base(peft_model, tier.quantize)
    return TrainingModel(base=base, tier=tier, peft_model=peft_model, layout=layout, prune_report=prune_report)


def check_output_location(out_dir: Path) -> None:
    """Fail early, before minutes of export, if ``out_dir`` could never be created or written."""
    ancestor = Path(out_dir).absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"cannot create output {out_dir}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create output {out_dir}: {ancestor} is not writable")


@contextlib.contextmanager
def staged_output_dir(out_dir: Path, replace: bool):
    """Yield a hidden staging directory that becomes ``out_dir`` only if the block succeeds."""
    out_dir = Path(out_dir)
    check_output_location(out_dir)
    if out_dir.exists() and not replace and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"output {out_dir} already exists; choose another --out or pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, retired / "old")
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def export_artifact(model_name: str, tier: Tier, out_dir: Path, *, replace: bool = False,
                    save_pruned_base: bool = True, on_stage=None, artifact_format: str = ARTIFACT_FORMAT,
                    ort_format: bool = False) -> tuple[TrainingModel, dict]:
    """Build and compile ``model_name`` at ``tier`` into ``out_dir``; returns the eager model and manifest.

    ``artifact_format`` picks the runtime: ``executorch`` (``.pte`` + ``.ptd``) or ``onnxruntime``
    (training/eval/optimizer ONNX models + checkpoint; ``ort_format`` adds ``.ort`` copies).
    Both compile the same eager model: pruning, LoRA initialization and int8 weights are
    identical, so devices on either runtime train one adapter.

    The returned eager model is exactly what was compiled (same weights, same LoRA
    initialization), which is what :mod:`export.verify` compares the runtime against.
    """
    notify = on_stage or (lambda stage: None)
    check_format(artifact_format)
    tier.validate()
    if artifact_format == "onnxruntime":
        from export.onnxruntime import check_training_hyperparameters

        check_training_hyperparameters(tier.train)  # before minutes of work, not after
    started = time.perf_counter()
    with staged_output_dir(out_dir, replace) as staging:
        notify("load")
        base = load_base_model(model_name)
        base_config = base.config.to_dict()
        training = build_training_model(base, tier, notify,
                                        staging / PRUNED_BASE_DIR if save_pruned_base else None)
        peft_model = training.peft_model
        if artifact_format == "executorch":
            first_trained_layer = training.layout.first_layer if tier.prefix_cache else None
            report = export_training_program(peft_model, tier.batch, tier.seq, staging, kernels=tier.kernels,
                                             first_trained_layer=first_trained_layer,
                                             loss_positions=tier.loss_positions, on_stage=notify)
            device_files = DEVICE_FILES
        else:
            from export import onnxruntime as ort_export

            report = ort_export.export_onnxruntime_artifacts(peft_model, tier, staging, ort_format=ort_format,
                                                             on_stage=notify)
            device_files = ort_export.device_files(ort_format) | {TOKENIZER_DIR}
        notify("manifest")
        base.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        adapter_config = peft_config_dict(peft_model, base_model_name=model_name)
        save_adapter(trainable_adapter_tensors(peft_model), adapter_config, staging / INITIAL_ADAPTER_DIR)
        sections = (_executorch_sections(training, report) if artifact_format == "executorch"
                    else _onnxruntime_sections(tier, report))
        manifest = _manifest_data(training, base_config, adapter_config, sections)
        manifest["export"]["total_seconds"] = round(time.perf_counter() - started, 3)
        manifest["files"] = describe_files(staging, device_files)
        write_manifest(staging, manifest)
    return training, manifest


def _onnxruntime_sections(tier: Tier, report: dict) -> dict:
    """The manifest parts that describe an ONNX Runtime artifact (its files, optimizer, versions).

    ONNX Runtime artifacts train the whole model: there is no prefix program to cache.
    """
    from export import onnxruntime as ort_export

    versions = {name: _version(name) for name in _VERSIONED_PACKAGES if name != "executorch"}
    return {"format": ort_export.FORMAT, "program": ort_export.program_section(tier, report), "prefix": None,
            "export": {"stage_seconds": report["stage_seconds"], "versions": {**versions, **ort_export.versions()},
                       "int8_frozen_weights": report["int8_frozen_weights"],
                       "trainable_tensors": report["trainable_tensors"]}}


def _executorch_sections(training: TrainingModel, report: dict) -> dict:
    """The manifest parts that describe an ExecuTorch artifact (its programs, lowering report, versions)."""
    tier = training.tier
    hidden_size = training.peft_model.get_base_model().config.hidden_size
    return {
        "format": ARTIFACT_FORMAT,
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
        "prefix": _prefix_section(training, hidden_size) if tier.prefix_cache else None,
        "export": {
            "stage_seconds": report["stage_seconds"],
            "graph_passes": {key: report[key] for key in _PASS_REPORT_KEYS if key in report},
            "delegate_calls": report["delegate_calls"],
            "planned_memory_bytes": report["planned_memory_bytes"],
            "versions": {name: _version(name) for name in _VERSIONED_PACKAGES},
        },
    }


def _manifest_data(training: TrainingModel, base_config: dict, adapter_config: dict, sections: dict) -> dict:
    """The manifest: what describes the eager model (the same for every format) around the
    format's own ``sections`` (``format``, ``program``, ``prefix``, ``export``)."""
    tier, model = training.tier, training.peft_model
    tokenizer = training.base.tokenizer
    lora_tensors = [{"name": name, "shape": list(t.shape), "dtype": "float32"}
                    for name, t in trainable_adapter_tensors(model).items()]
    pruned_config = model.get_base_model().config
    return {
        "format": sections["format"],
        "base_model": {
            "id": training.base.model_id,
            "content_sha256": training.base.content_sha256,
            "architecture": type(training.base.model).__name__,
            "num_hidden_layers": base_config["num_hidden_layers"],
            "hidden_size": base_config["hidden_size"],
            "vocab_size": base_config["vocab_size"],
            # The unpruned width, so that the coordinator's cost estimates for other tiers start
            # from the real model even when this artifact is pruned.
            "intermediate_size": base_config["intermediate_size"],
            "num_attention_heads": base_config["num_attention_heads"],
            "num_key_value_heads": base_config.get("num_key_value_heads") or base_config["num_attention_heads"],
            "head_dim": base_config.get("head_dim") or base_config["hidden_size"] // base_config["num_attention_heads"],
        },
        "pruned_model": {
            "num_hidden_layers": pruned_config.num_hidden_layers,
            "num_attention_heads": pruned_config.num_attention_heads,
            "num_key_value_heads": pruned_config.num_key_value_heads,
            "intermediate_size": pruned_config.intermediate_size,
            "head_dim": getattr(pruned_config, "head_dim", None),
            "pruning": training.prune_report,
        },
        "tier": tier.to_dict(),
        "program": sections["program"],
        "prefix": sections["prefix"],
        "tokenizer": {
            "dir": TOKENIZER_DIR,
            "pad_token_id": pad_token_id(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "add_special_tokens": False,
            "padding_side": "right",
            "truncation_side": "right",
            "labels": "labels equal ids on real tokens, ignore_index on padding",
        },
        "lora": {
            "layout": training.layout.to_dict(),
            "peft_config": adapter_config,
            "initial_adapter_dir": INITIAL_ADAPTER_DIR,
            "tensors": lora_tensors,
            "trainable_parameters": sum(int(torch.Size(t["shape"]).numel()) for t in lora_tensors),
        },
        "quantization": {
            "scheme": tier.quantize,
            "frozen_linears": "int8 weight-only, per-output-channel scale" if tier.quantize == "int8" else "float32",
            "embeddings_and_lm_head": "float32 (tied)",
        },
        "training": {**tier.to_dict()["train"], "loss": "cross_entropy"},
        "export": sections["export"],
    }


_PASS_REPORT_KEYS = ("empty_permuted_rewritten", "double_transposes_folded", "frozen_matmuls_to_linear",
                     "backward_frozen_weights")


def _prefix_section(training: TrainingModel, hidden_size: int) -> dict:
    """What a device needs to run and cache the frozen prefix (tiers with ``prefix_cache``)."""
    tier = training.tier
    return {
        "file": PREFIX_PROGRAM_FILE,
        "method": "forward",
        "first_trained_layer": training.layout.first_layer,
        "inputs": [{"name": "ids", "shape": [tier.batch, tier.seq], "dtype": "int64"}],
        "outputs": [{"name": "hidden", "shape": [tier.batch, tier.seq, hidden_size], "dtype": "float32",
                     "meaning": f"input of decoder layer {training.layout.first_layer}"}],
        "cache_bytes_per_example": tier.seq * hidden_size * 4,
        "cache_key": "sha256 of prefix.pte and of the example's token ids: valid while the base model is",
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
