"""Compile the device's half of a split-learning tier: the bottom of the model, with its LoRA.

MergeSFL-style split learning cuts the decoder below layer ``split_layer``: the device runs the
embeddings and layers ``0..split_layer-1`` with their LoRA, the server the rest
(:mod:`coordinator.split.top`). Each step the device computes the cut-layer features, sends them,
receives the gradient of the loss with respect to them, and backpropagates that gradient into
its LoRA weights. One ExecuTorch program, ``bottom.pte``, does the device's part with two methods
(:mod:`export.program_modules`):

- ``features(ids, *lora) -> features``, the LoRA weights passed in (the order is the report's
  ``lora_inputs``), so the device's current weights are used;
- ``forward(ids, grad) -> sum(features * grad)`` with its backward; the trainable weights load
  from ``bottom_lora.ptd`` and the runtime returns their gradients.

Both methods read the same frozen weights (the embedding table and the bottom's layers): in one
program those are stored and loaded once, where two programs carried a copy each (for SmolLM2
the embedding table alone is 113 MB).

The features are recomputed in the training program's forward (2 forward and 1 backward pass of
the bottom per step): a joint graph keeps no activations between calls, and the bottom is the
cheap part of the model by construction.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.executorch import ExportStageCallback, _StageTimer, compile_methods, example_inputs, write_adapter_ptd
from export.program_modules import (WRAPPED_MODEL_ATTRIBUTE, BottomFeaturesProgram, BottomTrainingProgram,
                                    bottom_lora_names, causal_lm_of)
from models.adapter_codec import peft_key

BOTTOM_PROGRAM_FILE = "bottom.pte"
BOTTOM_ADAPTER_FILE = "bottom_lora.ptd"
#: The bottom program's methods: the features, and the training step with its backward.
FEATURES_METHOD = "features"
TRAINING_METHOD = "forward"


def check_split_layer(peft_model: torch.nn.Module, split_layer: int) -> list[str]:
    """The bottom's LoRA parameter names (relative to the decoder) for a cut below ``split_layer``,
    or ``ValueError`` when the cut leaves either side empty or the bottom without LoRA."""
    layers = len(causal_lm_of(peft_model).get_decoder().layers)
    if isinstance(split_layer, bool) or not isinstance(split_layer, int) or not 1 <= split_layer < layers:
        raise ValueError(f"split_layer must be an integer in [1, {layers - 1}] for a {layers}-layer model, "
                         f"got {split_layer!r}")
    names = bottom_lora_names(peft_model, split_layer)
    if not names:
        raise ValueError(f"no LoRA weights below layer {split_layer}: the device would have nothing to train "
                         "(give the tier LoRA on every layer, lora_layers = the model's depth)")
    return names


def bottom_adapter_keys(peft_model: torch.nn.Module, lora_names: list[str]) -> list[str]:
    """PEFT adapter-file keys of the decoder-relative ``lora_names``, in the same order."""
    decoder = causal_lm_of(peft_model).get_decoder()
    by_identity = {id(parameter): name for name, parameter in peft_model.named_parameters()}
    relative = dict(decoder.named_parameters())
    return [peft_key(f"{WRAPPED_MODEL_ATTRIBUTE}.{by_identity[id(relative[name])]}") for name in lora_names]


def export_split_programs(peft_model: torch.nn.Module, split_layer: int, batch: int, seq: int, out_dir: Path, *,
                          kernels: str = "xnnpack", on_stage: ExportStageCallback | None = None) -> dict:
    """Write ``bottom.pte`` and ``bottom_lora.ptd`` for the layers of ``peft_model`` below
    ``split_layer`` into ``out_dir``.

    Returns a report: each stage's time, the lowering reports of both methods, the features'
    shape and ``lora_inputs``, the PEFT keys of the LoRA tensors in the order the features
    method takes them.
    """
    out_dir = Path(out_dir)
    names = check_split_layer(peft_model, split_layer)
    keys = bottom_adapter_keys(peft_model, names)
    timed = _StageTimer(on_stage)
    ids, _ = example_inputs(batch, seq, peft_model.config.vocab_size)
    relative = dict(causal_lm_of(peft_model).get_decoder().named_parameters())
    lora = tuple(relative[name].detach().clone() for name in names)
    features_program = BottomFeaturesProgram(peft_model, split_layer, names)
    training_program = BottomTrainingProgram(peft_model, split_layer)
    # Both cuts keep the same layers (those below the cut), so one cut() serves both exports.
    with features_program.cut(), training_program.cut():
        features = features_program(ids, *lora).detach()
        compiled, reports = compile_methods(
            {FEATURES_METHOD: (features_program, (ids, *lora), False),
             TRAINING_METHOD: (training_program, (ids, torch.ones_like(features)), True)},
            kernels=kernels, timed=timed)

    def write():
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / BOTTOM_PROGRAM_FILE, "wb") as f:
            compiled.write_to_file(f)
        write_adapter_ptd(dict(zip(keys, lora)), out_dir / BOTTOM_ADAPTER_FILE)

    timed("write", write)
    return {"stage_seconds": timed.seconds, "kernels": kernels, "split_layer": split_layer,
            "features_shape": list(features.shape), "lora_inputs": keys,
            "features_program": reports[FEATURES_METHOD], "training_program": reports[TRAINING_METHOD]}
