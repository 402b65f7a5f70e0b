"""Train a PocketTune ExecuTorch program through the ExecuTorch C++ runtime (Python bindings).

This is the same runtime, loading the same ``.pte`` and ``.ptd`` files, that the Android app
links; only the language that drives it differs. Keep this module free of coordinator and
network concerns: the runtime plug-in (fleet/runtimes/executorch.py) and the device logic
(fleet/device.py) sit on top.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from export.manifest import program_loss_positions
from fleet.prefix_cache import PrefixCache
from models.adapter_codec import peft_key, program_key
from models.batching import check_loss_positions


def set_runtime_threads(threads: int) -> None:
    """Size the runtime's threadpool (XNNPACK's kernels run on it); 0 leaves the default (one per core)."""
    if threads > 0:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

        if _threadpool_get_thread_count() != threads:
            _unsafe_reset_threadpool(threads)


class ExecuTorchTrainer:
    """One loaded training program; ``step(ids, labels)`` runs forward+backward and an SGD update.

    The starting adapter is whatever ``adapter_path`` holds: to train from another adapter
    (a new global one), write it as a ``.ptd`` (``models.adapter_codec.ptd_bytes``) and load that.

    Plain SGD (optionally with momentum) is what the runtime's optimizer offers; the parameter
    tensors it exposes are the runtime's own memory, so updates happen in place, and
    :meth:`adapter_tensors` reads the trained adapter straight from it. ``adamw`` runs
    ``torch.optim.AdamW`` over those same tensors (the runtime's gradients as ``.grad``): the
    optimizer ONNX Runtime devices step, so a job may mix both runtimes under one optimizer.

    With a :class:`~fleet.prefix_cache.PrefixCache` the program is a top program
    (``forward(hidden, labels)``): token ids go through the cache, which runs the frozen prefix
    only for examples it has not seen under this base model.

    ``loss_positions`` is the program's label-position head (the manifest's
    ``program.loss_positions``; :meth:`for_artifact` reads it): :meth:`step` and :meth:`loss`
    refuse, before running anything, a batch with a row labelled at more positions, which the
    program would silently train on only in part.
    """

    def __init__(self, program_path: Path, adapter_path: Path, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, prefix: PrefixCache | None = None, optimizer: str = "sgd",
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, loss_positions: int | None = None):
        self._program_path, self._adapter_path = Path(program_path), Path(adapter_path)
        for path in (self._program_path, self._adapter_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such file (is the artifact complete?)")
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {optimizer!r}; this runtime trains with sgd or adamw")
        self._lr, self._momentum, self._weight_decay = lr, momentum, weight_decay
        self._optimizer_name, self._betas, self._eps = optimizer, tuple(betas), eps
        self._loaded = None
        self._optimizer = None
        self.prefix = prefix
        self.loss_positions = loss_positions

    @property
    def _module(self):
        """The training program, loaded (and its frozen weights packed) on first use.

        Loading late lets :meth:`prepare` run the prefix program before this one takes memory.
        """
        if self._loaded is None:
            from executorch.extension.pybindings.portable_lib import _load_for_executorch
            from executorch.extension.training import TrainingModule

            self._loaded = TrainingModule(_load_for_executorch(str(self._program_path),
                                                               data_path=str(self._adapter_path)))
        return self._loaded

    @classmethod
    def for_artifact(cls, artifact_dir: Path, manifest: dict, adapter_path: Path, lr: float, momentum: float = 0.0,
                     weight_decay: float = 0.0, cache_dir: Path | None = None,
                     cache_memory_bytes: int = PrefixCache.DEFAULT_MEMORY_BYTES, optimizer: str = "sgd",
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                     prefix_cache: PrefixCache | None = None) -> "ExecuTorchTrainer":
        """The trainer an artifact's manifest calls for (with a prefix cache when it ships a prefix program).

        ``prefix_cache`` is a cache the caller keeps beyond this trainer (a device keeps one per
        base model, so what it computed last round is still there); it is used when it holds
        this artifact's prefix program's outputs (same sha256), else a new one is made in
        ``cache_dir``.
        """
        artifact_dir = Path(artifact_dir)
        prefix = None
        if manifest.get("prefix"):
            prefix = (prefix_cache if prefix_cache is not None and prefix_cache.matches(manifest)
                      else PrefixCache.for_artifact(artifact_dir, manifest, cache_dir, cache_memory_bytes))
        return cls(artifact_dir / manifest["program"]["file"], adapter_path, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, prefix=prefix, optimizer=optimizer, betas=betas, eps=eps,
                   loss_positions=program_loss_positions(manifest))

    def prepare(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill the prefix cache for these batches now, then free the prefix program.

        Without it the cache fills lazily during :meth:`step`, with the prefix program held in
        memory beside the training program for the whole run.
        """
        if self.prefix is not None:
            self.prefix.fill(ids for ids, _ in batches)
            self.prefix.release_program()

    def _inputs(self, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_loss_positions(labels, self.loss_positions)   # before the prefix or the program runs
        return (self.prefix.hidden(ids) if self.prefix is not None else ids), labels

    def step(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """One training step on a [batch, seq] batch; returns the loss before the update."""
        loss = self._module.forward_backward("forward", self._inputs(ids, labels))[0]
        if self._optimizer_name == "adamw":
            self._adamw_step()
            return float(loss.item())
        if self._optimizer is None:
            from executorch.extension.training import get_sgd_optimizer

            self._optimizer = get_sgd_optimizer(self._module.named_parameters(), self._lr, self._momentum,
                                                0.0, self._weight_decay, False)
        self._optimizer.step(self._module.named_gradients())
        return float(loss.item())

    def _adamw_step(self) -> None:
        """``torch.optim.AdamW`` over the runtime's parameter tensors, with its gradients as ``.grad``."""
        parameters = self._module.named_parameters()
        gradients = self._module.named_gradients()
        if self._optimizer is None:
            self._adamw_parameters = [parameters[name] for name in sorted(parameters)]
            self._optimizer = torch.optim.AdamW(self._adamw_parameters, lr=self._lr, betas=self._betas,
                                                eps=self._eps, weight_decay=self._weight_decay, foreach=False)
        for name, tensor in zip(sorted(parameters), self._adamw_parameters):
            tensor.grad = gradients[name]
        with torch.no_grad():
            self._optimizer.step()

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """The loss on a batch without updating anything (gradients are computed and discarded)."""
        return float(self._module.forward_backward("forward", self._inputs(ids, labels))[0].item())

    def load_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        """Write PEFT-keyed LoRA values into the runtime's own parameter tensors, in place (the
        optimizer keeps its state: it holds these same tensors). The runtime exposes them only
        once a method has run. ``ValueError`` for a key or shape the program does not train."""
        live = self._module.named_parameters()
        for key, value in tensors.items():
            target = live.get(program_key(key))
            if target is None or tuple(target.shape) != tuple(value.shape):
                raise ValueError(f"adapter tensor {key} {tuple(value.shape)} does not fit this program")
            with torch.no_grad():
                target.copy_(value)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The current LoRA weights under PEFT adapter-file keys (copies).

        The runtime exposes its parameters only once a method has run: call :meth:`step` or
        :meth:`loss` first.
        """
        return dict(sorted((peft_key(k), v.clone()) for k, v in self._module.named_parameters().items()))
