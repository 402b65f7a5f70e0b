"""Rebuild, on the server, the eager model an artifact's program was compiled from.

The coordinator scores global adapters on held-out data with ordinary PyTorch, and that
score only means something if the model is the one devices train: same (pruned) base
weights, same LoRA layout, same quantized frozen linears. Everything needed is in the
artifact directory: ``manifest.json`` (base model id and content hash, tier, LoRA layout and
tensor names), ``pruned_base/`` (the pruned fp32 base, when the tier prunes; pruning needs
calibration activations, so it is saved rather than redone), ``tokenizer/`` and
``initial_adapter/``. The program itself (``model.pte``) is not read.

The rebuild goes through :func:`export.pipeline.build_training_model` with the tier's pruning
turned off (the base it gets is already pruned), so LoRA and quantization are applied by the
same code, in the same order, as at export.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export.manifest import Manifest, read_manifest
from export.pipeline import INITIAL_ADAPTER_DIR, PRUNED_BASE_DIR, TOKENIZER_DIR, build_training_model
from models.adapter_codec import peft_key
from models.adapters import load_adapter
from models.registry import BaseModel, load_base_model, state_dict_sha256
from models.tier import Tier

#: PEFT wraps the model as ``base_model.model.…``; the program wraps that once more as ``model.…``.
_PROGRAM_PREFIX = "model."
_MAX_LISTED = 5


@dataclass
class ArtifactModel:
    """The eager PEFT model of an artifact (eval mode), its tokenizer and its manifest."""

    peft_model: torch.nn.Module
    tokenizer: object
    manifest: Manifest

    @property
    def tier(self) -> Tier:
        return Tier.from_dict(self.manifest.tier)


def load_artifact_model(artifact_dir: Path) -> ArtifactModel:
    """The eager model ``artifact_dir``'s program computes, holding the artifact's initial adapter.

    Raises ``FileNotFoundError`` when a pruned tier's ``pruned_base/`` is missing (exported
    without ``save_pruned_base``), ``ValueError`` when the base model found is not the one
    the manifest names (content hash) or the rebuilt LoRA layout differs from the manifest's.
    """
    from transformers import AutoTokenizer

    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir)
    tier = Tier.from_dict(manifest.tier)
    base = _load_base(artifact_dir, manifest, tier)
    base.tokenizer = AutoTokenizer.from_pretrained(str(artifact_dir / TOKENIZER_DIR))
    # The base is already pruned: build_training_model then only adds LoRA and quantizes.
    unpruned_tier = dataclasses.replace(tier, prune_ratio=0.0, prune_importance_adapter=None)
    training = build_training_model(base, unpruned_tier)
    layout = training.layout.to_dict()
    if layout != manifest.data["lora"]["layout"]:
        raise ValueError(f"{artifact_dir}: rebuilt LoRA layout {layout} differs from the manifest's "
                         f"{manifest.data['lora']['layout']}")
    peft_model = training.peft_model
    tensors, _ = load_adapter(artifact_dir / INITIAL_ADAPTER_DIR)
    set_adapter_tensors(peft_model, tensors)
    peft_model.eval()
    return ArtifactModel(peft_model=peft_model, tokenizer=base.tokenizer, manifest=manifest)


def _load_base(artifact_dir: Path, manifest: Manifest, tier: Tier) -> BaseModel:
    model_id = manifest.data["base_model"]["id"]
    if tier.prune_ratio > 0:
        pruned_dir = artifact_dir / PRUNED_BASE_DIR
        if not (pruned_dir / "config.json").is_file():
            raise FileNotFoundError(f"{artifact_dir}: the tier prunes {model_id} but the artifact has no "
                                    f"{PRUNED_BASE_DIR}/ (export it with save_pruned_base=True)")
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(pruned_dir), dtype=torch.float32,
                                                     attn_implementation="sdpa")
        model.eval()
        _check_pruned_shape(artifact_dir, model, manifest)
        return BaseModel(model_id=model_id, model=model, tokenizer=None, content_sha256=state_dict_sha256(model))
    base = load_base_model(model_id)
    expected = manifest.data["base_model"]["content_sha256"]
    if base.content_sha256 != expected:
        raise ValueError(f"{artifact_dir}: base model {model_id!r} here has content sha256 "
                         f"{base.content_sha256[:12]}..., the artifact was exported from {expected[:12]}...")
    return base


def _check_pruned_shape(artifact_dir: Path, model, manifest: Manifest) -> None:
    expected = manifest.data["pruned_model"]
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
        if getattr(model.config, key) != expected[key]:
            raise ValueError(f"{artifact_dir}: {PRUNED_BASE_DIR}/ has {key} {getattr(model.config, key)}, "
                             f"the manifest says {expected[key]}")


def adapter_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The model's trainable LoRA parameters by PEFT adapter-file key (the keys updates use)."""
    return {peft_key(_PROGRAM_PREFIX + name): param
            for name, param in peft_model.named_parameters() if param.requires_grad}


def set_adapter_tensors(peft_model: torch.nn.Module, tensors: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Load PEFT-keyed LoRA tensors (as in ``adapter_model.safetensors``) into ``peft_model``.

    The keys must be exactly the model's LoRA parameters and every shape must match;
    otherwise ``ValueError`` says which keys are missing, extra or of the wrong shape, and
    nothing is changed.
    """
    params = adapter_parameters(peft_model)
    missing, extra = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_listed(missing)}")
    if extra:
        problems.append(f"unexpected {len(extra)} tensor(s): {_listed(extra)}")
    converted = {}
    for key in sorted(set(params) & set(tensors)):
        value = tensors[key]
        # A copy of a numpy array: the coordinator's cached adapters are read-only arrays.
        value = value.detach() if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))
        if tuple(value.shape) != tuple(params[key].shape):
            problems.append(f"{key} has shape {list(value.shape)}, the model's is {list(params[key].shape)}")
        converted[key] = value
    if problems:
        raise ValueError("adapter tensors do not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in converted.items():
            params[key].copy_(value.to(dtype=params[key].dtype, device=params[key].device))


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return ", ".join(names[:_MAX_LISTED]) + more
