"""Train a PocketTune ONNX Runtime artifact through ``onnxruntime.training.api``.

The second on-device runtime, beside :mod:`fleet.runtime_executorch`, with the same trainer
surface (``step``, ``loss``, ``adapter_tensors``: :class:`fleet.runtimes.base.Trainer`) so the
device loop does not care which one it drives; :mod:`fleet.runtimes.onnxruntime` plugs it in.
``Module`` runs the training model (forward, backward, gradients accumulated in the checkpoint
state's buffers), ``Optimizer`` runs the compiled optimizer model over them.

The round's start adapter arrives as PEFT-keyed safetensors (the global adapter every format
shares) and is written into the checkpoint state's LoRA parameters before the training
session is created; the trained values are read back from the same state.

Only the training build of ONNX Runtime (``onnxruntime-training-cpu`` 1.19.2, the last
upstream release) provides this API: :func:`check_training_build` says so clearly when the
plain inference package has taken over the ``onnxruntime`` module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from export.manifest import program_loss_positions
from models.adapter_codec import peft_key
from models.batching import check_loss_positions

#: ORT's own logging at WARNING and above only (its INFO lines describe every graph pass).
_LOG_SEVERITY_WARNING = 2


class TrainingBuildMissing(RuntimeError):
    """``onnxruntime.training`` is not importable (plain ``onnxruntime`` installed, or nothing)."""


def check_training_build():
    """Import and return ``onnxruntime.training.api``, or raise with what to do."""
    try:
        from onnxruntime.training import api
    except ImportError as exc:
        raise TrainingBuildMissing(
            "the ONNX Runtime training build is not importable ("
            f"{exc}); install onnxruntime-training-cpu==1.19.2 and make sure the plain onnxruntime "
            "package is not installed beside it (pip uninstall onnxruntime; then pip install "
            "--force-reinstall --no-deps onnxruntime-training-cpu==1.19.2)") from exc
    return api


class OnnxRuntimeTrainer:
    """One ONNX Runtime training session over an artifact; ``step(ids, labels)`` trains one batch.

    ``start_adapter`` (PEFT keys -> tensors) replaces the checkpoint's LoRA values; every
    trainable parameter must be given, with the manifest's shape, so a device never trains
    from a half-loaded adapter. ``lr`` is set on the compiled optimizer (it is not compiled in).
    A label-position artifact (``program.loss_positions`` K) has :meth:`step` and :meth:`loss`
    refuse, before running, a batch with a row labelled at more than K positions.
    """

    def __init__(self, artifact_dir: Path, manifest: Mapping, start_adapter: Mapping[str, torch.Tensor | np.ndarray],
                 lr: float, threads: int = 1):
        api = check_training_build()
        import onnxruntime

        onnxruntime.set_default_logger_severity(_LOG_SEVERITY_WARNING)
        program = manifest["program"]
        self.loss_positions = program_loss_positions(manifest)
        artifact_dir = Path(artifact_dir)
        paths = {part: artifact_dir / program[part] for part in ("training_model", "optimizer_model", "checkpoint")}
        for path in paths.values():
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such file (is the artifact complete?)")
        self.state = api.CheckpointState.load_checkpoint(str(paths["checkpoint"]))
        self._trainable = [name for name, parameter in self.state.parameters if parameter.requires_grad]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = _LOG_SEVERITY_WARNING
        options.intra_op_num_threads = max(int(threads), 0)
        level = program.get("session", {}).get("graph_optimization_level", "enable_all")
        options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
                                            if level == "disable_all" else onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
        self.module = api.Module(str(paths["training_model"]), self.state, session_options=options)
        self.optimizer = api.Optimizer(str(paths["optimizer_model"]), self.module)
        self.optimizer.set_learning_rate(float(lr))
        # Only once the Module is built: 1.19.2 crashes (SIGSEGV) writing a parameter of a
        # checkpoint state that no session has bound yet.
        self.load_adapter(start_adapter)
        self.module.train()

    def load_adapter(self, tensors: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Write PEFT-keyed LoRA tensors into the checkpoint state (all of them, shapes checked)."""
        expected = {peft_key(name): name for name in self._trainable}
        missing, unknown = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unknown:
            raise ValueError(f"the adapter does not fit this artifact: missing {missing[:3]}, unknown {unknown[:3]}")
        for key, name in expected.items():
            value = tensors[key]
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            parameter = self.state.parameters[name]
            if tuple(array.shape) != tuple(parameter.data.shape):
                raise ValueError(f"adapter tensor {key} has shape {tuple(array.shape)}; the artifact trains "
                                 f"{tuple(parameter.data.shape)}")
            parameter.data = np.ascontiguousarray(array, dtype=np.float32)

    def _feed(self, ids: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        check_loss_positions(labels, self.loss_positions)
        return (np.ascontiguousarray(ids.numpy(), dtype=np.int64),
                np.ascontiguousarray(labels.numpy(), dtype=np.int64))

    def step(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """One training step on a [batch, seq] batch; returns the loss before the update."""
        loss = self.module(*self._feed(ids, labels))
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return float(loss)

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """The loss on a batch without updating anything (the gradients computed are reset)."""
        loss = self.module(*self._feed(ids, labels))
        self.module.lazy_reset_grad()
        return float(loss)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The current LoRA weights under PEFT adapter-file keys (copies)."""
        return dict(sorted((peft_key(name), torch.from_numpy(self.state.parameters[name].data.copy()))
                           for name in self._trainable))


def read_start_adapter(path: Path) -> dict[str, torch.Tensor]:
    """A round's start adapter as the coordinator ships it to ONNX Runtime devices (safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(path))

