"""Check an exported training program against eager PyTorch, step for step.

The same initial adapter, the same batches and the same SGD settings go through (a) the
ExecuTorch runtime loading the artifact's ``.pte``/``.ptd`` and (b) the in-memory PyTorch
model the artifact was compiled from. Matching loss curves and LoRA weights prove that the
program computes the right gradients, which no amount of "the loss went down" can.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.executorch import ADAPTER_DATA_FILE, LanguageModelLoss, trainable_adapter_tensors
from export.manifest import read_manifest
from fleet.runtime_executorch import ExecuTorchTrainer


def train_eager(peft_model: torch.nn.Module, batches, steps: int, lr: float, momentum: float = 0.0,
                weight_decay: float = 0.0) -> tuple[list[float], dict[str, torch.Tensor]]:
    """SGD on the LoRA weights of ``peft_model`` in eager PyTorch; returns losses and final adapter.

    Trains the model in place: pass a model whose LoRA weights may change.
    """
    module = LanguageModelLoss(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    losses = []
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = module(ids, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    return losses, trainable_adapter_tensors(peft_model)


def train_runtime(artifact_dir: Path, batches, steps: int, lr: float, momentum: float = 0.0,
                  weight_decay: float = 0.0) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same training through the ExecuTorch runtime on the artifact's files (and its prefix cache, if any)."""
    artifact_dir = Path(artifact_dir)
    trainer = ExecuTorchTrainer.for_artifact(artifact_dir, read_manifest(artifact_dir).data,
                                             artifact_dir / ADAPTER_DATA_FILE, lr=lr, momentum=momentum,
                                             weight_decay=weight_decay)
    losses = [trainer.step(*batches[step % len(batches)]) for step in range(steps)]
    return losses, trainer.adapter_tensors()


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest elementwise |a - b| over identically keyed tensor dicts."""
    if set(a) != set(b):
        raise ValueError(f"tensor names differ: {sorted(set(a) ^ set(b))[:4]}")
    return max(((a[k] - b[k]).abs().max().item() for k in a), default=0.0)


def verify_against_eager(peft_model: torch.nn.Module, artifact_dir: Path, batches, steps: int,
                         lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> dict:
    """Train ``steps`` steps both ways from the same start; report both curves and the max LoRA gap."""
    if steps <= 0:
        raise ValueError("verification needs at least one step")
    runtime_losses, runtime_adapter = train_runtime(artifact_dir, batches, steps, lr, momentum, weight_decay)
    initial = trainable_adapter_tensors(peft_model)
    eager_losses, eager_adapter = train_eager(peft_model, batches, steps, lr, momentum, weight_decay)
    return {
        "steps": steps,
        "lr": lr,
        "eager_loss": eager_losses,
        "runtime_loss": runtime_losses,
        "max_abs_loss_diff": max(abs(x - y) for x, y in zip(eager_losses, runtime_losses)),
        "max_abs_lora_diff": max_abs_difference(eager_adapter, runtime_adapter),
        "max_abs_lora_change": max_abs_difference(eager_adapter, initial),
    }
