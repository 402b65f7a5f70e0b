"""The server's half of a split-learning step: the top of the model, in eager PyTorch.

In split learning (MergeSFL) the devices run the bottom of the model (``fleet/split_bottom.py``)
and the server the layers from ``split_layer`` up, the final norm, the LM head and the loss,
with their LoRA. One :meth:`SplitTop.step` takes a batch of cut-layer features (the merged
features of several devices), runs the top forward and backward once, updates the top's LoRA
and returns the gradient of the loss with respect to every feature row, which the server
slices back to the devices that sent them.
"""

from __future__ import annotations

import torch

from export.program_modules import WRAPPED_MODEL_ATTRIBUTE, TopTrainingProgram
from models.adapter_codec import peft_key


class SplitTop:
    """The top of ``peft_model`` above the cut, trained with SGD (momentum, weight decay) or AdamW
    on its own LoRA weights (those of layers ``split_layer`` and up)."""

    def __init__(self, peft_model: torch.nn.Module, split_layer: int, lr: float, *, optimizer: str = "sgd",
                 momentum: float = 0.0, weight_decay: float = 0.0, loss_positions: int | None = None):
        self.program = TopTrainingProgram(peft_model, split_layer, loss_positions)
        self.loss_positions = loss_positions      # the steps refuse labels with more per row
        layers = len(self.program.causal_lm.get_decoder().layers)
        if not 1 <= split_layer < layers:
            raise ValueError(f"split_layer must be in [1, {layers - 1}], got {split_layer}")
        self.parameters = {name: p for name, p in peft_model.named_parameters()
                           if p.requires_grad and _layer_of(name) is not None and _layer_of(name) >= split_layer}
        if not self.parameters:
            raise ValueError(f"no LoRA weights at or above layer {split_layer}: the server would train nothing")
        params = list(self.parameters.values())
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        elif optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; use sgd or adamw")

    def loss_and_feature_grad(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The loss on ``features`` [batch, seq, hidden] and its gradient with respect to them;
        the top's LoRA gradients are left in ``.grad`` (no update)."""
        features = features.detach().clone().requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.program.cut():
            loss = self.program(features, labels)
        loss.backward()
        return float(loss.item()), features.grad.detach()

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The top's LoRA weights under PEFT adapter-file keys (copies)."""
        return {peft_key(f"{WRAPPED_MODEL_ATTRIBUTE}.{name}"): p.detach().clone() for name, p in self.parameters.items()}

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One training step of the top: (loss before the update, gradient of the features).

        Finite features can still overflow the loss (a hostile device's huge values): then the
        top is not updated and every feature's gradient is zero (a no-op for the devices), so
        one bad batch cannot write NaN into the top's weights; the loss is reported as NaN."""
        loss, grad = self.loss_and_feature_grad(features, labels)
        finite = all(bool(torch.isfinite(p.grad).all()) for p in self.parameters.values() if p.grad is not None)
        if not (finite and bool(torch.isfinite(grad).all()) and torch.isfinite(torch.tensor(loss))):
            self.optimizer.zero_grad(set_to_none=True)
            return float("nan"), torch.zeros_like(grad)
        self.optimizer.step()
        return loss, grad


def _layer_of(name: str) -> int | None:
    """The decoder layer index in a parameter name (``...layers.12.self_attn...``), or None."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None
