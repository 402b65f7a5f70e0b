"""The device's half of a split-learning step, on the ExecuTorch runtime (Python bindings).

Per step (:mod:`export.split_programs` says which program and why): :meth:`SplitBottomTrainer.features`
runs ``bottom.pte``'s ``features`` method with the current LoRA weights and returns the cut-layer
features the device sends to the server; :meth:`SplitBottomTrainer.backward` takes the server's
gradient of the loss with respect to those features, runs the ``forward`` method and its backward
on the same ids, and steps SGD on the bottom's LoRA weights in place. The same runtime and files the
Android app would load; nothing here knows about the network.
"""

from __future__ import annotations

from pathlib import Path

import torch

from export.executorch import read_adapter_ptd
from export.split_programs import BOTTOM_ADAPTER_FILE, BOTTOM_PROGRAM_FILE, FEATURES_METHOD, TRAINING_METHOD
from models.adapter_codec import peft_key, program_key


#: Projections whose input is the decoder's hidden state.
_READS_HIDDEN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")


class SplitBottomTrainer:
    """One device's bottom programs, loaded from ``program_dir`` (``adapter_path``: the start
    adapter's ``.ptd``, default the exported one); ``lora_inputs`` is the features program's
    input order (the export report's ``lora_inputs``)."""

    def __init__(self, program_dir: Path, lora_inputs: list[str], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, adapter_path: Path | None = None):
        from executorch.extension.pybindings.portable_lib import _load_for_executorch
        from executorch.extension.training import TrainingModule

        program_dir = Path(program_dir)
        adapter_path = Path(adapter_path) if adapter_path is not None else program_dir / BOTTOM_ADAPTER_FILE
        self._start = read_adapter_ptd(adapter_path)
        missing = sorted(set(lora_inputs) ^ set(self._start))
        if missing:
            raise ValueError(f"the adapter and the features program disagree on the LoRA tensors: {missing}")
        self.lora_inputs = list(lora_inputs)
        self._hidden = self._hidden_size()
        # One loaded program: the features method and the training method share its frozen weights.
        self._module = _load_for_executorch(str(program_dir / BOTTOM_PROGRAM_FILE), data_path=str(adapter_path))
        self._training = TrainingModule(self._module)
        self._lr, self._momentum, self._weight_decay = lr, momentum, weight_decay
        self._optimizer = None
        self._ran = False       # the runtime exposes its parameters once a method has run

    def _hidden_size(self) -> int:
        """The features' width, read from the start adapter: the lora_A of a projection that reads
        the hidden state (q, k, v, gate, up) is [rank, hidden]."""
        widths = {value.shape[1] for key, value in self._start.items()
                  if "lora_A" in key and any(f".{name}." in key for name in _READS_HIDDEN)}
        if len(widths) != 1:
            raise ValueError(f"cannot tell the features' width from the adapter's lora_A shapes {sorted(widths)}")
        return widths.pop()

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The bottom's current LoRA weights under PEFT keys (copies)."""
        if not self._ran:
            return {key: value.clone() for key, value in self._start.items()}
        return {peft_key(k): v.clone() for k, v in self._training.named_parameters().items()}

    def load_adapter(self, tensors: dict[str, torch.Tensor]) -> None:
        """Replace the bottom's LoRA weights with ``tensors`` (PEFT keys, the server's average).

        The runtime exposes its weights only after a method ran, so before the first step one
        backward with a zero gradient runs (it changes nothing) to reach them."""
        if set(tensors) != set(self._start):
            raise ValueError(f"the adapter's keys differ from the bottom's: {sorted(set(tensors) ^ set(self._start))[:3]}")
        for key, value in tensors.items():
            if value.dtype != torch.float32 or value.shape != self._start[key].shape \
                    or not bool(torch.isfinite(value).all()):
                raise ValueError(f"{key}: expected finite float32 {list(self._start[key].shape)}")
        if not self._ran:
            sizes = list(self._training_batch_shape())
            ids = torch.zeros(sizes, dtype=torch.long)
            self._training.forward_backward(TRAINING_METHOD, (ids, torch.zeros(*sizes, self._hidden)))
            self._ran = True
        live = self._training.named_parameters()
        for key, value in tensors.items():
            live[program_key(key)].copy_(value)

    def _training_batch_shape(self) -> tuple[int, int]:
        """The compiled [batch, seq] of the programs' token ids."""
        return tuple(self._module.method_meta(FEATURES_METHOD).input_tensor_meta(0).sizes())

    def features(self, ids: torch.Tensor) -> torch.Tensor:
        """The cut-layer features of ``ids`` [batch, seq] under the current weights."""
        if self._ran:
            live = self._training.named_parameters()
            lora = [live[program_key(key)] for key in self.lora_inputs]
        else:
            lora = [self._start[key] for key in self.lora_inputs]
        return self._module.run_method(FEATURES_METHOD, (ids, *lora))[0].clone()

    def backward(self, ids: torch.Tensor, grad: torch.Tensor, step: bool = True) -> dict[str, torch.Tensor]:
        """Backpropagate the server's ``grad`` (same shape as :meth:`features`) into the LoRA
        weights; with ``step``, one SGD update. Returns the gradients under PEFT keys (copies).

        The server is not trusted either: a gradient of another shape, another dtype or with a
        non-finite value is refused (``ValueError``) before anything runs or changes."""
        expected = (ids.shape[0], ids.shape[1], self._hidden)
        if not isinstance(grad, torch.Tensor) or grad.dtype != torch.float32 or tuple(grad.shape) != expected:
            shown = f"{grad.dtype} {list(grad.shape)}" if isinstance(grad, torch.Tensor) else type(grad).__name__
            raise ValueError(f"the server's gradient must be float32 {list(expected)}, got {shown}")
        if not bool(torch.isfinite(grad).all()):
            raise ValueError("the server's gradient holds NaN or infinite values")
        self._training.forward_backward(TRAINING_METHOD, (ids, grad))
        self._ran = True
        gradients = self._training.named_gradients()
        copies = {peft_key(k): v.clone() for k, v in gradients.items()}
        if step:
            if self._optimizer is None:
                from executorch.extension.training import get_sgd_optimizer

                self._optimizer = get_sgd_optimizer(self._training.named_parameters(), self._lr, self._momentum,
                                                    0.0, self._weight_decay, False)
            self._optimizer.step(gradients)
        return copies
