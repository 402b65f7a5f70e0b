"""Weight-only int8 quantization of the frozen base linears.

Why weight-only int8: the frozen base is most of a training artifact's bytes and of a phone's
RAM, while its activations and the LoRA weights must stay fp32 for stable gradients. Each
frozen ``nn.Linear`` weight becomes int8 with one fp32 scale per output channel (torchao's
``Int8WeightOnlyConfig``); the forward dequantizes on the fly.

What stays fp32, and why:
- LoRA A/B: they are what is trained.
- The token embedding and the LM head. In the Llama models PocketTune targets (SmolLM2, the
  tiny preset) they are one *tied* tensor, so quantizing the head would also quantize the
  embedding lookup that is not an ``nn.Linear``; and the head's error lands directly on the
  logits that the loss differentiates. For SmolLM2-135M this tensor is 28.3M of the 134.5M
  parameters (113 MB of fp32): the largest item left in an int8 artifact.
- RMSNorm weights (a few KB).

``unwrap_tensor_subclass`` then turns torchao's tensor subclasses into plain tensors plus
parametrizations, which ``torch.export`` can trace (it refuses traceable subclasses in the
joint forward/backward export).
"""

from __future__ import annotations

import torch

QUANTIZATIONS = ("none", "int8")


def is_frozen_base_linear(module: torch.nn.Module, fqn: str) -> bool:
    """True for the nn.Linear layers that belong to the frozen base (not LoRA, not the LM head)."""
    return isinstance(module, torch.nn.Linear) and "lora_" not in fqn and not fqn.endswith("lm_head")


def quantize_frozen_base(model: torch.nn.Module, scheme: str) -> int:
    """Quantize the frozen base linears of ``model`` in place; returns how many were quantized."""
    if scheme not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {scheme!r}; use one of {', '.join(QUANTIZATIONS)}")
    if scheme == "none":
        return 0
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from torchao.utils import unwrap_tensor_subclass

    targets = [fqn for fqn, mod in model.named_modules() if is_frozen_base_linear(mod, fqn)]
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=is_frozen_base_linear)
    unwrap_tensor_subclass(model)
    return len(targets)
