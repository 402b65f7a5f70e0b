"""(base model, tier) -> a directory of device training artifacts, written all or nothing.

Order matters: prune the fp32 base (importance scores need real activations), attach LoRA
(its shapes follow the pruned widths), quantize only the frozen base, then compile. Compiling
is the artifact format's job (a plug-in of :mod:`export.formats`: ExecuTorch or ONNX Runtime);
everything before it, and the manifest's description of the eager model, is the same for every
format, so devices on any runtime train one adapter. The
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
from pathlib import Path

import torch

from export.executorch import trainable_adapter_tensors
from export.formats import DEFAULT_FORMAT, get_format
from export.manifest import describe_files, write_manifest
from models.adapters import peft_config_dict, save_adapter
from models.batching import pad_token_id
from models.lora import LoraLayout, apply_lora, merged_copy, resolve_layout
from models.pruning import calibration_ids, prune_model
from models.quantize import quantize_frozen_base
from models.registry import BaseModel, load_base_model
from models.tier import Tier

TOKENIZER_DIR = "tokenizer"
INITIAL_ADAPTER_DIR = "initial_adapter"
PRUNED_BASE_DIR = "pruned_base"


@dataclass
class TrainingModel:
    """The eager model an artifact is compiled from, and how it was derived from its base."""

    base: BaseModel
    tier: Tier
    peft_model: torch.nn.Module
    layout: LoraLayout
    prune_report: dict


def build_training_model(base: BaseModel, tier: Tier, on_stage=None,
                         pruned_base_dir: Path | None = None, importance_adapter: dict | None = None) -> TrainingModel:
    """Prune, attach LoRA and quantize ``base`` as ``tier`` says (mutates ``base.model``).

    With ``pruned_base_dir``, a pruned base is also saved there (fp32, before LoRA and
    quantization) so the server can evaluate and merge adapters on exactly that model.
    ``importance_adapter``: the tensors of the adapter ``tier.prune_importance_adapter`` names
    (PEFT-keyed, over the unpruned base), merged into a copy of the base to choose what the
    pruning keeps; required exactly when the tier names one.
    """
    notify = on_stage or (lambda stage: None)
    tier.validate(base.config.num_hidden_layers)
    if (importance_adapter is None) != (tier.prune_importance_adapter is None):
        raise ValueError("the tier prunes by a tuned adapter's importance but none was given"
                         if importance_adapter is None else
                         "an importance adapter was given but the tier does not name one (prune_importance_adapter)")
    notify("prune")
    calibration = calibration_ids(base.tokenizer) if tier.prune_ratio > 0 else None
    tuned = merged_copy(base.model, importance_adapter) if importance_adapter is not None else None
    prune_report = prune_model(base.model, tier.pruning, calibration, importance_model=tuned)
    del tuned
    if importance_adapter is not None:
        prune_report["importance_adapter"] = tier.prune_importance_adapter
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
                    save_pruned_base: bool = True, on_stage=None, artifact_format: str = DEFAULT_FORMAT,
                    ort_format: bool = False, importance_adapter: dict | None = None,
                    program_cache: Path | None = None) -> tuple[TrainingModel, dict]:
    """Build and compile ``model_name`` at ``tier`` into ``out_dir``; returns the eager model and manifest.

    ``artifact_format`` names the runtime's format (:mod:`export.formats`): ``executorch``
    (``.pte`` + ``.ptd``) or ``onnxruntime`` (training/eval/optimizer ONNX models + checkpoint;
    ``ort_format`` adds ``.ort`` copies, and formats that take no such option ignore it).
    Every format compiles the same eager model: pruning, LoRA initialization and int8 weights
    are identical, so devices on any runtime train one adapter.

    The returned eager model is exactly what was compiled (same weights, same LoRA
    initialization), which is what :mod:`fleet.verify` compares the runtime against.
    ``importance_adapter``: the tensors of the adapter a tier's ``prune_importance_adapter``
    names (see :func:`build_training_model`). ``program_cache``: a folder where formats keep
    compiled parts that several tiers share (ExecuTorch: the frozen-prefix program).
    """
    notify = on_stage or (lambda stage: None)
    export_format = get_format(artifact_format)
    tier.validate()
    unsupported = export_format.unsupported(tier.to_dict())
    if unsupported is not None:
        raise ValueError(unsupported)  # before minutes of work, not after
    options = {"ort_format": ort_format, "program_cache": program_cache}
    started = time.perf_counter()
    with staged_output_dir(out_dir, replace) as staging:
        notify("load")
        base = load_base_model(model_name)
        base_config = base.config.to_dict()
        training = build_training_model(base, tier, notify,
                                        staging / PRUNED_BASE_DIR if save_pruned_base else None,
                                        importance_adapter=importance_adapter)
        peft_model = training.peft_model
        report = export_format.build(training, staging, options, notify)
        device_files = export_format.device_files(options) | {TOKENIZER_DIR}
        notify("manifest")
        base.tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        adapter_config = peft_config_dict(peft_model, base_model_name=model_name)
        save_adapter(trainable_adapter_tensors(peft_model), adapter_config, staging / INITIAL_ADAPTER_DIR)
        sections = export_format.manifest_sections(training, report)
        manifest = _manifest_data(training, base_config, adapter_config, sections)
        manifest["export"]["total_seconds"] = round(time.perf_counter() - started, 3)
        manifest["files"] = describe_files(staging, device_files)
        write_manifest(staging, manifest)
    return training, manifest


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
