"""Check an exported training program against eager PyTorch, step for step.

The same initial adapter, the same batches and the same optimizer settings go through (a) the
artifact's runtime (ExecuTorch loading the ``.pte``/``.ptd``, or ONNX Runtime loading the
training and optimizer models, by the manifest's format) and (b) the in-memory PyTorch
model the artifact was compiled from. Matching loss curves and LoRA weights prove that the
program computes the right gradients, which no amount of "the loss went down" can.

The eager side always computes the loss with the LM head at every position: a label-position
program (``program.loss_positions`` K) is held to the full head, on batches whose rows are
labelled at K positions at most. Batches with more are refused before either side trains
(the program would compute another loss, and the comparison would blame the wrong thing).
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.executorch import ADAPTER_DATA_FILE, LanguageModelLoss, trainable_adapter_tensors
from export.manifest import program_loss_positions, read_manifest
from fleet.runtime_executorch import ExecuTorchTrainer
from models.batching import check_loss_positions
from models.tier import TrainingHyperparameters

ADAMW_DEFAULTS = {"betas": TrainingHyperparameters.betas, "eps": TrainingHyperparameters.eps}


def eager_optimizer(params, optimizer: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                    betas: tuple[float, float] = ADAMW_DEFAULTS["betas"], eps: float = ADAMW_DEFAULTS["eps"]):
    """The ``torch.optim`` optimizer a tier's training settings name (the runtimes' reference)."""
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; use sgd or adamw")


def train_eager(peft_model: torch.nn.Module, batches, steps: int, lr: float, momentum: float = 0.0,
                weight_decay: float = 0.0, optimizer: str = "sgd",
                **adamw) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train the LoRA weights of ``peft_model`` in eager PyTorch; returns losses and final adapter.

    Trains the model in place: pass a model whose LoRA weights may change. ``adamw`` takes
    ``betas`` and ``eps`` when ``optimizer`` is ``"adamw"``.
    """
    module = LanguageModelLoss(peft_model)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = eager_optimizer(params, optimizer, lr, momentum, weight_decay, **adamw)
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
                  weight_decay: float = 0.0, optimizer: str = "sgd",
                  **adamw) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same training through the artifact's runtime on its files (and its prefix cache, if any).

    ONNX Runtime artifacts step their compiled optimizer (its settings are in the manifest);
    ``optimizer`` and the other settings must match it.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir).data
    check_batches_fit(artifact_dir, batches[:steps])
    if manifest["format"] == "onnxruntime":
        from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter

        compiled = manifest["program"]["optimizer"]
        if compiled["optimizer"] != optimizer:
            raise ValueError(f"the artifact compiled {compiled['optimizer']}, not {optimizer}")
        start = read_start_adapter(artifact_dir / manifest["lora"]["initial_adapter_dir"] / "adapter_model.safetensors")
        trainer = OnnxRuntimeTrainer(artifact_dir, manifest, start, lr=lr)
    else:
        trainer = ExecuTorchTrainer.for_artifact(artifact_dir, manifest, artifact_dir / ADAPTER_DATA_FILE, lr=lr,
                                                 momentum=momentum, weight_decay=weight_decay, optimizer=optimizer,
                                                 **adamw)
    losses = [trainer.step(*batches[step % len(batches)]) for step in range(steps)]
    return losses, trainer.adapter_tensors()


def check_batches_fit(artifact_dir: Path, batches) -> None:
    """``ValueError`` naming the first batch with a row labelled at more positions than the
    artifact's label-position head computes (nothing to check for a full-head artifact)."""
    loss_positions = program_loss_positions(read_manifest(artifact_dir).data)
    for index, (_, labels) in enumerate(batches):
        try:
            check_loss_positions(labels, loss_positions)
        except ValueError as exc:
            raise ValueError(f"cannot verify on batch {index}: {exc}") from None


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest elementwise |a - b| over identically keyed tensor dicts."""
    if set(a) != set(b):
        raise ValueError(f"tensor names differ: {sorted(set(a) ^ set(b))[:4]}")
    return max(((a[k] - b[k]).abs().max().item() for k in a), default=0.0)


def verify_against_eager(peft_model: torch.nn.Module, artifact_dir: Path, batches, steps: int,
                         lr: float, momentum: float = 0.0, weight_decay: float = 0.0, optimizer: str = "sgd",
                         **adamw) -> dict:
    """Train ``steps`` steps both ways from the same start; report both curves and the max LoRA gap."""
    if steps <= 0:
        raise ValueError("verification needs at least one step")
    check_batches_fit(artifact_dir, batches[:steps])
    settings = dict(momentum=momentum, weight_decay=weight_decay, optimizer=optimizer, **adamw)
    runtime_losses, runtime_adapter = train_runtime(artifact_dir, batches, steps, lr, **settings)
    initial = trainable_adapter_tensors(peft_model)
    eager_losses, eager_adapter = train_eager(peft_model, batches, steps, lr, **settings)
    return {
        "steps": steps,
        "lr": lr,
        "optimizer": optimizer,
        "format": read_manifest(artifact_dir).data["format"],
        "eager_loss": eager_losses,
        "runtime_loss": runtime_losses,
        "max_abs_loss_diff": max(abs(x - y) for x, y in zip(eager_losses, runtime_losses)),
        "max_abs_lora_diff": max_abs_difference(eager_adapter, runtime_adapter),
        "max_abs_lora_change": max_abs_difference(eager_adapter, initial),
    }
