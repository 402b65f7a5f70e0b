"""Compile the device's half of a split-learning tier: the bottom of the model, with its LoRA.

MergeSFL-style split learning cuts the decoder below layer ``split_layer``: the device runs the
embeddings and layers ``0..split_layer-1`` with their LoRA, the server the rest
(:mod:`coordinator.split.top`). Each step the device computes the cut-layer features, sends them,
receives the gradient of the loss with respect to them, and backpropagates that gradient into
its LoRA weights. Two ExecuTorch programs do the device's part
(:mod:`export.program_modules`):

- ``bottom_features.pte``: ``forward(ids, *lora) -> features``, the LoRA weights passed in (the
  order is the manifest's ``split.lora_inputs``), so the device's current weights are used;
- ``bottom_train.pte``: ``forward(ids, grad) -> sum(features * grad)`` with its backward; the
  trainable weights load from ``bottom_lora.ptd`` and the runtime returns their gradients.

The features are recomputed in the training program's forward (2 forward and 1 backward pass of
the bottom per step): a joint graph keeps no activations between calls, and the bottom is the
cheap part of the model by construction.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.executorch import (ExportStageCallback, _StageTimer, compile_program, example_inputs,
                               write_adapter_ptd)
from export.program_modules import (WRAPPED_MODEL_ATTRIBUTE, BottomFeaturesProgram, BottomTrainingProgram,
                                    bottom_lora_names, causal_lm_of)
from models.adapter_codec import peft_key

FEATURES_PROGRAM_FILE = "bottom_features.pte"
BOTTOM_TRAINING_PROGRAM_FILE = "bottom_train.pte"
BOTTOM_ADAPTER_FILE = "bottom_lora.ptd"


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
    """Write ``bottom_features.pte``, ``bottom_train.pte`` and ``bottom_lora.ptd`` for the layers of
    ``peft_model`` below ``split_layer`` into ``out_dir``.

    Returns a report: each stage's time, the lowering reports of both programs, the features'
    shape and ``lora_inputs``, the PEFT keys of the LoRA tensors in the order the features
    program takes them.
    """
    out_dir = Path(out_dir)
    names = check_split_layer(peft_model, split_layer)
    keys = bottom_adapter_keys(peft_model, names)
    timed = _StageTimer(on_stage)
    ids, _ = example_inputs(batch, seq, peft_model.config.vocab_size)
    relative = dict(causal_lm_of(peft_model).get_decoder().named_parameters())
    lora = tuple(relative[name].detach().clone() for name in names)
    features_program = BottomFeaturesProgram(peft_model, split_layer, names)
    with features_program.cut():
        features = features_program(ids, *lora).detach()
        compiled_features, features_report = compile_program(features_program, (ids, *lora), train=False,
                                                             kernels=kernels, timed=timed, stage_prefix="features_")
    training_program = BottomTrainingProgram(peft_model, split_layer)
    with training_program.cut():
        compiled_training, training_report = compile_program(training_program, (ids, torch.ones_like(features)),
                                                             train=True, kernels=kernels, timed=timed)

    def write():
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, program in ((FEATURES_PROGRAM_FILE, compiled_features),
                              (BOTTOM_TRAINING_PROGRAM_FILE, compiled_training)):
            with open(out_dir / name, "wb") as f:
                program.write_to_file(f)
        write_adapter_ptd(dict(zip(keys, lora)), out_dir / BOTTOM_ADAPTER_FILE)

    timed("write", write)
    return {"stage_seconds": timed.seconds, "kernels": kernels, "split_layer": split_layer,
            "features_shape": list(features.shape), "lora_inputs": keys,
            "features_program": features_report, "training_program": training_report}
