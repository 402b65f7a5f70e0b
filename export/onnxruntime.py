"""Compile a LoRA-wrapped causal LM into ONNX Runtime *training* artifacts (the second backend).

Some phones ship ONNX Runtime rather than ExecuTorch. For them the exporter writes, from the
very same eager model (same pruning, LoRA layout and initialization, same int8 frozen base):

- ``training_model.onnx``: ``(ids, labels) -> loss`` with its gradient graph; the frozen base
  weights are constants inside it, the LoRA weights its only trainable inputs;
- ``optimizer_model.onnx``: the tier's optimizer (AdamW with ``torch.optim.AdamW`` semantics, or
  plain SGD) as a graph the runtime steps;
- ``checkpoint``: the LoRA weights (a device overwrites them with the round's start adapter);
- ``eval_model.onnx``: the forward alone. It stays on the server: a device computes its
  before/after losses with the training model, so it never holds two copies of the base;
- optionally the same models in ``.ort`` format (flatbuffers, for minimal mobile builds).

Why this module is kept apart, and honest about versions: upstream froze the training
packages at ``onnxruntime-training-cpu`` 1.19.2 (on-device training was deprecated after it),
and that build owns the ``onnxruntime`` module, so the plain inference wheel must never be
installed beside it. Everything ONNX is imported inside functions: the ExecuTorch path and the
coordinator never load it.

The ONNX graph is traced with the TorchScript exporter (``dynamo=False``) in training mode with
constant folding off, which keeps parameter names as initializer names (the dynamo exporter's
optimizer renames them); LoRA tensors are therefore named exactly as in the ExecuTorch program
(``model.<peft path>.lora_A.default.weight``) and map to PEFT adapter keys the same way
(:mod:`models.adapter_codec`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from export.executorch import example_inputs, trainable_adapter_tensors
from export.manifest import loss_output
# (coordinator/services still imports both from here; the format plug-in asks the same module)
from export.onnxruntime_optimizer import check_training_hyperparameters, compiled_optimizer
from export.program_modules import WRAPPED_MODEL_ATTRIBUTE, causal_lm_of, labelled_rows
from models.adapter_codec import program_key
from models.batching import IGNORE_INDEX
from models.tier import Tier, TrainingHyperparameters
TRAINING_MODEL_FILE = "training_model.onnx"
EVAL_MODEL_FILE = "eval_model.onnx"
OPTIMIZER_MODEL_FILE = "optimizer_model.onnx"
CHECKPOINT_FILE = "checkpoint"
#: The training build this backend is written and tested against (the last one upstream released).
TRAINING_PACKAGE = "onnxruntime-training-cpu"
TRAINING_PACKAGE_VERSION = "1.19.2"
#: ORT 1.19 reads ONNX IR <= 10; opset 17 is what its training ops and gradient builders cover.
OPSET = 17
_ORT_SUFFIX = ".ort"
_RENAMED_PREFIX = "onnx::"

ExportStageCallback = Callable[[str], None]
STAGES = ("onnx_export", "training_artifacts", "ort_format")


class OnnxTrainingProgram(torch.nn.Module):
    """``forward(ids, labels) -> loss``: :class:`export.program_modules.TrainingProgram` for ONNX.

    Two differences, both for the ONNX side: an explicit all-ones attention mask (without one,
    Hugging Face's mask construction traces ``aten::diff``, which has no ONNX symbolic), and the
    loss as ``F.cross_entropy`` over the shifted logits, which exports to ONNX's
    ``SoftmaxCrossEntropyLoss`` (with ``ignore_index``) whose gradient ORT implements natively.
    (:func:`export.program_modules.next_token_loss`, the ExecuTorch form, uses ``logsumexp``,
    and ORT 1.19's gradient of ``ReduceLogSumExp`` emits an opset-11 ``Unsqueeze`` that opset 17
    graphs reject.) Both compute the same value; tests hold them to eager PyTorch.

    ``loss_positions`` K: the head only on the hidden states of the first K labelled positions
    per row, picked by the same one-hot matrix product as the ExecuTorch program
    (:func:`export.program_modules.labelled_rows`: ``CumSum``, ``Equal``, ``And``, ``Cast`` and
    a batched ``MatMul``, whose gradient ORT builds), padding picks given ``ignore_index`` so
    that ``SoftmaxCrossEntropyLoss`` averages over the real ones only.
    """

    def __init__(self, model: torch.nn.Module, loss_positions: int | None = None):
        super().__init__()
        setattr(self, WRAPPED_MODEL_ATTRIBUTE, model)
        self.loss_positions = loss_positions

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        causal_lm = causal_lm_of(getattr(self, WRAPPED_MODEL_ATTRIBUTE))
        hidden = causal_lm.get_decoder()(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         use_cache=False).last_hidden_state
        head = causal_lm.get_output_embeddings()
        if self.loss_positions is not None:
            rows, targets, valid = labelled_rows(hidden, labels, self.loss_positions)
            return F.cross_entropy(head(rows), torch.where(valid, targets, torch.full_like(targets, IGNORE_INDEX)),
                                   ignore_index=IGNORE_INDEX)
        logits = head(hidden[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)


def _optimizer_block(train: TrainingHyperparameters):
    from onnxruntime.training import onnxblock

    if train.optimizer == "sgd":
        return onnxblock.optim.SGD()

    class TorchAdamW(onnxblock.optim.optim.AdamWOptimizer):
        """ORT's AdamW node with ``adam_mode=0``: PyTorch's update, not Hugging Face's (mode 1)."""

        def _build_optimizer_node(self, input_names, output_name, node_name, node_attributes):
            return super()._build_optimizer_node(input_names, output_name, node_name,
                                                 {**node_attributes, "adam_mode": 0})

    settings = dict(betas=tuple(train.betas), eps=train.eps, weight_decay=train.weight_decay)
    block = onnxblock.optim.AdamW(bias_correction=True, **settings)
    block._adamw = TorchAdamW(bias_correction=True, **settings)
    return block


def _timed(seconds: dict, notify: ExportStageCallback, stage: str, fn):
    notify(stage)
    start = time.perf_counter()
    result = fn()
    seconds[stage] = round(time.perf_counter() - start, 3)
    return result


def export_onnxruntime_artifacts(peft_model: torch.nn.Module, tier: Tier, out_dir: Path, *,
                                 ort_format: bool = False, on_stage: ExportStageCallback | None = None) -> dict:
    """Write the training, eval and optimizer models and the checkpoint for ``peft_model`` into ``out_dir``.

    Returns a report: stage times, parameter counts, whether graph optimizations must stay off
    (int8 frozen weights), and the file names.
    """
    import onnx
    from onnxruntime.training import artifacts

    check_training_hyperparameters(tier.train)
    notify = on_stage or (lambda stage: None)
    out_dir = Path(out_dir)
    seconds: dict[str, float] = {}
    ids, labels = example_inputs(tier.batch, tier.seq, peft_model.config.vocab_size)
    traced_path = out_dir / ".traced.onnx"

    def trace():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on constant shapes
            torch.onnx.export(OnnxTrainingProgram(peft_model, tier.loss_positions), (ids, labels), str(traced_path),
                              dynamo=False, opset_version=OPSET, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.TRAINING, input_names=["ids", "labels"],
                              output_names=["loss"])
        return onnx.load(str(traced_path))

    model = _timed(seconds, notify, "onnx_export", trace)
    traced_path.unlink()
    trainable = [program_key(key) for key in trainable_adapter_tensors(peft_model)]
    initializers = {init.name for init in model.graph.initializer}
    missing = sorted(set(trainable) - initializers)
    if missing:
        raise RuntimeError(f"the ONNX exporter renamed {len(missing)} LoRA weights (e.g. {missing[0]}); "
                           "they cannot be mapped to adapter keys")
    int8_weights = sum(1 for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8)

    def generate():
        with native_stderr_captured() as chatter:
            try:
                artifacts.generate_artifacts(model, requires_grad=trainable, frozen_params=[], loss=None,
                                             optimizer=_optimizer_block(tier.train), artifact_directory=out_dir,
                                             ort_format=False)
            except Exception as exc:
                raise RuntimeError(f"building the ONNX Runtime training graph failed: {exc}\n"
                                   f"last runtime messages:\n{chatter.tail()}") from exc

    _timed(seconds, notify, "training_artifacts", generate)
    files = [TRAINING_MODEL_FILE, EVAL_MODEL_FILE, OPTIMIZER_MODEL_FILE]
    if ort_format:
        _timed(seconds, notify, "ort_format", lambda: _convert_to_ort(out_dir, files))
    return {"stage_seconds": seconds, "opset": OPSET, "trainable_tensors": len(trainable),
            "frozen_initializers": len(initializers) - len(trainable), "int8_frozen_weights": int8_weights,
            # int8 weights reach the graph as int8 initializers dequantized by Cast+Mul (torchao's
            # weight-only scheme, traced); ORT's default graph optimizations keep the numerics
            # (tests compare against eager PyTorch), so sessions use them.
            "graph_optimization_level": "enable_all",
            "ort_format": ort_format, "optimizer": compiled_optimizer(tier.train)}


class _CapturedStream:
    """What the runtime wrote to the process's stderr while captured (kept in a temporary file)."""

    def __init__(self, file):
        self._file = file

    def tail(self, lines: int = 20) -> str:
        self._file.flush()
        self._file.seek(0)
        return "\n".join(self._file.read().decode(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def native_stderr_captured():
    """Send file descriptor 2 to a temporary file for the block.

    The training graph builder logs every graph pass at INFO from C++ through ORT's default
    logger, whatever severity Python sets; hundreds of lines per export would bury the
    exporter's own progress. They are kept, and shown when the build fails.
    """
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield _CapturedStream(sink)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _convert_to_ort(out_dir: Path, files: list[str]) -> None:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    for name in files:
        convert_onnx_models_to_ort(out_dir / name, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed])


def device_files(ort_format: bool = False) -> set[str]:
    """What a phone downloads: the training and optimizer models and the checkpoint."""
    names = {TRAINING_MODEL_FILE, OPTIMIZER_MODEL_FILE, CHECKPOINT_FILE}
    if ort_format:
        names |= {Path(name).with_suffix(_ORT_SUFFIX).name for name in (TRAINING_MODEL_FILE, OPTIMIZER_MODEL_FILE)}
    return names


def program_section(tier: Tier, report: dict) -> dict:
    """The manifest's ``program`` for an ONNX Runtime artifact: files, inputs, optimizer, session settings."""
    section = {
        "training_model": TRAINING_MODEL_FILE,
        "optimizer_model": OPTIMIZER_MODEL_FILE,
        "checkpoint": CHECKPOINT_FILE,
        "eval_model": EVAL_MODEL_FILE,
        "eval_model_on_device": False,
        "inputs": [
            {"name": "ids", "shape": [tier.batch, tier.seq], "dtype": "int64"},
            {"name": "labels", "shape": [tier.batch, tier.seq], "dtype": "int64", "ignore_index": IGNORE_INDEX},
        ],
        "outputs": [loss_output(tier.loss_positions)],
        "loss_positions": tier.loss_positions,
        "trainable_names": "ONNX parameter model.<adapter key with .default before .weight>, as in the ExecuTorch program",
        "optimizer": report["optimizer"],
        "learning_rate": "set by the device from the task (Optimizer.set_learning_rate)",
        "session": {"graph_optimization_level": report["graph_optimization_level"]},
        "opset": report["opset"],
        "runtime": {"package": TRAINING_PACKAGE, "version": TRAINING_PACKAGE_VERSION,
                    "api": "onnxruntime.training.api (CheckpointState, Module, Optimizer)"},
    }
    if report["ort_format"]:
        section["ort_format"] = {name: Path(name).with_suffix(_ORT_SUFFIX).name
                                 for name in (TRAINING_MODEL_FILE, OPTIMIZER_MODEL_FILE)}
    return section


def versions() -> dict:
    """Versions of the ONNX side of the toolchain (recorded in the manifest)."""
    found = {}
    for package in ("onnx", TRAINING_PACKAGE):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found

