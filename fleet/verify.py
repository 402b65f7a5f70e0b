"""Check an exported training program against eager PyTorch, step for step.

The same initial adapter, the same batches and the same optimizer settings go through (a) the
artifact's device runtime (the :mod:`fleet.runtimes` plug-in its manifest's format names:
ExecuTorch loading the ``.pte``/``.ptd``, ONNX Runtime loading the training and optimizer
models) and (b) the in-memory PyTorch model the artifact was compiled from. Matching loss
curves and LoRA weights prove that the program computes the right gradients, which no amount
of "the loss went down" can.

It lives on the device side because it drives a runtime: ``export/`` never imports ``fleet/``.
``pockettune export --verify`` reaches :func:`verify_artifact` through the command line
(``fleet/cli.py`` hands it to the export command).

The eager side always computes the loss with the LM head at every position: a label-position
program (``program.loss_positions`` K) is held to the full head, on batches whose rows are
labelled at K positions at most. Batches with more are refused before either side trains
(the program would compute another loss, and the comparison would blame the wrong thing).
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.executorch import LanguageModelLoss, trainable_adapter_tensors
from export.formats import get_format
from export.manifest import program_loss_positions, read_manifest
from fleet.runtimes import get_runtime
from models.batching import check_loss_positions
from models.tier import TrainingHyperparameters

#: What :func:`verify_artifact` trains on: the articles' text, every token labelled ...
VERIFY_TEXT_SOURCE = "BBC News train split"
#: ... or, for a label-position artifact, labels on the topic word only (raw text labels every
#: token, which a label-position program refuses).
VERIFY_TASK_SOURCE = "bbcnews task, train split (topic word labelled)"

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
    """The same training through the artifact's runtime on its files (and its prefix cache, if any),
    from the artifact's own initial adapter.

    A runtime whose artifacts compile their optimizer (ONNX Runtime: its settings are in the
    manifest) refuses other settings with a ``ValueError``.
    """
    artifact_dir = Path(artifact_dir)
    manifest = read_manifest(artifact_dir).data
    check_batches_fit(artifact_dir, batches[:steps])
    train = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "optimizer": optimizer, **adamw}
    runtime = get_runtime(manifest["format"])
    mismatch = runtime.settings_mismatch(manifest, train)
    if mismatch is not None:
        raise ValueError(mismatch)
    start = artifact_dir / get_format(manifest["format"]).initial_start_adapter(manifest)
    trainer = runtime.trainer(artifact_dir, manifest, start, train)
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


def verify_artifact(training, out_dir: Path, steps: int) -> dict:
    """Run :func:`verify_against_eager` on real text batched as the manifest says (``export --verify``).

    ``training`` is the eager model :func:`export.pipeline.export_artifact` returned with the
    artifact in ``out_dir``. A label-position artifact trains on the bbcnews task's batches (the
    topic word labelled), any other on the articles' text (every token labelled).
    """
    from models.batching import make_batches
    from models.corpora import bbc_news

    tier = training.tier
    count = tier.batch * min(steps, 8)
    if tier.loss_positions is not None:
        from models.tasks import get_task

        task = get_task("bbcnews")
        batches = task.batches(training.base.tokenizer, task.examples("train")[:count], tier.batch, tier.seq)
        source = VERIFY_TASK_SOURCE
    else:
        texts = [doc.text for doc in bbc_news("train")[:count]]
        batches = make_batches(training.base.tokenizer, texts, tier.batch, tier.seq)
        source = VERIFY_TEXT_SOURCE
    train = tier.train
    adamw = dict(betas=train.betas, eps=train.eps) if train.optimizer == "adamw" else {}
    result = verify_against_eager(training.peft_model, out_dir, batches, steps, lr=train.lr, momentum=train.momentum,
                                  weight_decay=train.weight_decay, optimizer=train.optimizer, **adamw)
    return {"model": training.base.model_id, "tier": tier.to_dict(), "data": source, **result}
