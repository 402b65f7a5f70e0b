"""Compile a LoRA-wrapped causal LM into ExecuTorch *training* programs.

The training program has one method, ``forward(ids, labels) -> loss``, with the backward pass
inside (``_export_forward_backward``): the runtime returns the loss, the gradients of the LoRA
weights and the LoRA weights themselves, and the device steps an optimizer on them in place.
With frozen-prefix caching it is two programs instead (:mod:`export.program_modules`):
``prefix.pte`` (inference up to the lowest LoRA layer) and a top training program
``forward(hidden, labels) -> loss``.

Lowering (:func:`compile_program`): with the ``xnnpack`` kernels the joint graph's frozen
weights are folded so that they reach the forward as ``linear(x, W)`` and the backward as
``mm(grad, W)`` (:mod:`export.graph_passes`), and XNNPACK takes every node that does not read
a trained weight (:mod:`export.xnnpack`); ``portable`` keeps every op on the reference kernels.

The trainable LoRA weights are not baked into the ``.pte``: with ``external_mutable_weights``
they live in a small ``.ptd`` file beside it. A new global adapter therefore ships as a new
``.ptd`` (kilobytes to a few MB) without re-exporting or re-downloading the program
(hundreds of MB). :func:`write_adapter_ptd` and :func:`read_adapter_ptd` convert between
PEFT adapter tensors and that file, through the torch-free codec :mod:`models.adapter_codec`
(which also maps PEFT keys to the program's tensor names).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from export.graph_passes import (backward_weight_use, fold_frozen_double_transposes, frozen_matmuls_to_linear,
                                 replace_empty_permuted)
from export.program_modules import WRAPPED_MODEL_ATTRIBUTE, PrefixProgram, TopTrainingProgram, TrainingProgram
from models.adapter_codec import peft_key, ptd_bytes, tensors_from_ptd
from models.batching import IGNORE_INDEX
from models.tier import KERNELS  # noqa: F401  (re-exported: the exporter's choices)

PROGRAM_FILE = "model.pte"
PREFIX_PROGRAM_FILE = "prefix.pte"
ADAPTER_DATA_FILE = "lora.ptd"

_WRAPPER_ATTRIBUTE = WRAPPED_MODEL_ATTRIBUTE

ExportStageCallback = Callable[[str], None]


class LanguageModelLoss(torch.nn.Module):
    """``forward(ids, labels)`` -> mean next-token cross-entropy over labels != -100, in eager PyTorch.

    The eager reference the runtime is checked against (and the eager side of benchmarks):
    the usual ``F.cross_entropy`` over shifted logits, which is eager PyTorch's fastest and
    leanest form. The compiled programs compute the same value another way
    (:func:`export.program_modules.next_token_loss`).

    Shapes are fixed at export ([batch, seq]); devices pad with label -100, which the loss
    ignores, so short examples cost compute but never change the gradient.

    With ``loss_positions`` K it is the eager label-position head: the LM head only on the
    hidden states at labelled positions (an eager boolean index, as many rows as there are
    labels), refusing a batch with a row labelled at more than K positions as the compiled
    program's trainers do. The value is the full head's either way; verification keeps the
    full head (``None``) as the reference the label-position programs are held to.
    """

    def __init__(self, model: torch.nn.Module, loss_positions: int | None = None):
        super().__init__()
        setattr(self, _WRAPPER_ATTRIBUTE, model)
        self.loss_positions = loss_positions

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model = getattr(self, _WRAPPER_ATTRIBUTE)
        if self.loss_positions is not None:
            from export.program_modules import causal_lm_of
            from models.batching import check_loss_positions

            check_loss_positions(labels, self.loss_positions)
            causal_lm = causal_lm_of(model)
            hidden = causal_lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            targets = labels[:, 1:]
            counted = targets != IGNORE_INDEX
            logits = causal_lm.get_output_embeddings()(hidden[:, :-1][counted])
            return F.cross_entropy(logits, targets[counted])
        logits = model(input_ids=ids, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)


# --- export ------------------------------------------------------------------------------------

def example_inputs(batch: int, seq: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that fix the program's shapes. ``labels`` is a distinct tensor: if both arguments
    were the same object, export would merge them into one input."""
    ids = torch.arange(batch * seq, dtype=torch.long).reshape(batch, seq) % vocab_size
    return ids, ids.clone()


class _StageTimer:
    """Calls ``on_stage`` before each stage and records how long each took."""

    def __init__(self, on_stage: ExportStageCallback | None):
        self.notify = on_stage or (lambda stage: None)
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str, fn):
        self.notify(stage)
        start = time.perf_counter()
        result = fn()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)
        return result


def compile_program(module: torch.nn.Module, inputs: tuple, *, train: bool, kernels: str,
                    timed: _StageTimer, stage_prefix: str = ""):
    """``module`` -> an ExecuTorch program (with its backward when ``train``) and a report.

    The report says what the graph passes changed, how many XNNPACK delegate calls the
    program makes and, for training programs, which frozen weights the backward multiplies by.
    """
    program, reports = compile_methods({"forward": (module, inputs, train)}, kernels=kernels, timed=timed,
                                       stage_prefix=stage_prefix)
    return program, reports["forward"]


def compile_methods(methods: dict, *, kernels: str, timed: _StageTimer, stage_prefix: str = ""):
    """Several methods -> one ExecuTorch program and a report per method.

    ``methods`` maps a method name to ``(module, inputs, train)``. The methods of one program
    share its constant data: a frozen weight two methods use is stored (and loaded) once, which
    is why a split device's features and training methods live in one program (the bottom's
    embedding table alone is 113 MB for SmolLM2). At most one method may be a training method.
    """
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge, to_edge_transform_and_lower
    from torch.export import export
    from torch.export.experimental import _export_forward_backward
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; use one of {', '.join(KERNELS)}")
    if sum(1 for _, _, train in methods.values() if train) > 1:
        raise ValueError("one program holds at most one training method")
    exported, reports = {}, {}
    for name, (module, inputs, train) in methods.items():
        prefix = stage_prefix if len(methods) == 1 else f"{stage_prefix}{name}_"
        # The math SDPA kernel decomposes into ops the runtime has, with a differentiable backward.
        with sdpa_kernel([SDPBackend.MATH]):
            program = timed(prefix + "export", lambda: export(module, inputs, strict=False))
            if train:
                program = timed(prefix + "forward_backward", lambda: _export_forward_backward(program))
            else:
                # The same core-ATen decomposition the joint graph gets, so the passes below see the
                # same ops (and views of transposed attention outputs become explicit copies).
                program = timed(prefix + "export", lambda: program.run_decompositions())
        report = {"empty_permuted_rewritten": replace_empty_permuted(program)}
        if kernels == "xnnpack":
            report["double_transposes_folded"] = fold_frozen_double_transposes(program)
            report["frozen_matmuls_to_linear"] = frozen_matmuls_to_linear(program)
            if train:
                report["backward_frozen_weights"] = backward_weight_use(program)
        exported[name], reports[name] = program, report
    compile_config = EdgeCompileConfig(_check_ir_validity=False)
    if kernels == "xnnpack":
        from export.xnnpack import FrozenWeightsXnnpackPartitioner

        edge = timed(stage_prefix + "lower", lambda: to_edge_transform_and_lower(
            exported, partitioner=[FrozenWeightsXnnpackPartitioner()], compile_config=compile_config))
    else:
        edge = timed(stage_prefix + "lower", lambda: to_edge(exported, compile_config=compile_config))
    for name, report in reports.items():
        graph = edge.exported_program(name).graph
        report["delegate_calls"] = sum(1 for n in graph.nodes if n.op == "call_function"
                                       and getattr(n.target, "__name__", "") == "executorch_call_delegate")
        report["portable_ops"] = sum(1 for n in graph.nodes if n.op == "call_function"
                                     and getattr(n.target, "__name__", "") not in ("executorch_call_delegate", "getitem"))
    train = any(train for _, _, train in methods.values())
    executorch_program = timed(stage_prefix + "to_executorch", lambda: edge.to_executorch(
        ExecutorchBackendConfig(external_mutable_weights=train)))
    plans = {plan.name: plan for plan in executorch_program.executorch_program.execution_plan}
    for name, report in reports.items():
        report["planned_memory_bytes"] = int(sum(plans[name].non_const_buffer_sizes))
    return executorch_program, reports


def prefix_program_key(prefix: PrefixProgram, batch: int, seq: int, kernels: str) -> str:
    """A content key for the compiled prefix program of ``prefix`` (call inside its ``cut()``).

    Everything the program is compiled from: every tensor the cut module still holds (the
    frozen bottom's weights, after pruning and quantization; the layers above the cut are
    pass-throughs and hold none), the config, the fixed shapes, the kernels and the versions of
    the compilers. Tiers that differ only above the cut (LoRA rank, targets, optimizer) share it.
    """
    import hashlib
    import json
    from importlib import metadata

    digest = hashlib.sha256()
    described = {"batch": batch, "seq": seq, "kernels": kernels, "first_trained_layer": prefix.first_trained_layer,
                 "config": prefix.causal_lm.config.to_dict(),
                 "versions": {name: metadata.version(name) for name in ("torch", "executorch")}}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in [*prefix.named_parameters(), *prefix.named_buffers()]:
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _compiled_prefix(prefix: PrefixProgram, ids: torch.Tensor, kernels: str, timed: _StageTimer,
                     program_cache: Path | None) -> tuple[object, dict]:
    """The prefix program and its lowering report: from ``program_cache`` when an identical
    prefix was compiled before (minutes of XNNPACK lowering for SmolLM2), else compiled now
    (and stored there). Returns (program bytes or an ExecuTorch program, report)."""
    import json

    if program_cache is None:
        return compile_program(prefix, (ids,), train=False, kernels=kernels, timed=timed, stage_prefix="prefix_")
    key = timed("prefix_key", lambda: prefix_program_key(prefix, ids.size(0), ids.size(1), kernels))
    entry = Path(program_cache) / f"prefix-{key}"
    if (entry / PREFIX_PROGRAM_FILE).is_file() and (entry / "report.json").is_file():
        report = json.loads((entry / "report.json").read_text())
        return (entry / PREFIX_PROGRAM_FILE).read_bytes(), {**report, "reused": key}
    program, report = compile_program(prefix, (ids,), train=False, kernels=kernels, timed=timed,
                                      stage_prefix="prefix_")
    staging = Path(program_cache) / f".prefix-{key}.partial-{os.getpid()}-{threading.get_ident()}"
    staging.mkdir(parents=True, exist_ok=True)
    with open(staging / PREFIX_PROGRAM_FILE, "wb") as f:
        program.write_to_file(f)
    (staging / "report.json").write_text(json.dumps(report))
    try:
        os.replace(staging, entry)
    except OSError:   # another export stored the same prefix first
        shutil.rmtree(staging, ignore_errors=True)
    return program, report


def export_training_program(peft_model: torch.nn.Module, batch: int, seq: int, out_dir: Path, *,
                            kernels: str = "xnnpack", first_trained_layer: int | None = None,
                            loss_positions: int | None = None,
                            on_stage: ExportStageCallback | None = None, program_cache: Path | None = None) -> dict:
    """Write ``model.pte`` and ``lora.ptd`` for ``peft_model`` into ``out_dir``.

    With ``first_trained_layer`` (frozen-prefix caching), ``model.pte`` trains from the hidden
    state entering that layer (``forward(hidden, labels)``) and ``prefix.pte`` computes that
    hidden state from token ids (``forward(ids) -> hidden``, inference only).
    With ``loss_positions`` K the training program's LM head runs only at the first K labelled
    positions of each row (:func:`export.program_modules.next_token_loss`); inputs are unchanged.

    Returns a report with the time of each stage and what the graph passes changed.
    ``on_stage`` is called with each stage's name before it starts (for progress displays).
    ``program_cache``: a folder of compiled prefix programs by content
    (:func:`prefix_program_key`), so that tiers sharing a frozen bottom (ranks of one pruned
    base) compile it once.
    """
    out_dir = Path(out_dir)
    timed = _StageTimer(on_stage)
    ids, labels = example_inputs(batch, seq, peft_model.config.vocab_size)
    programs: dict[str, object] = {}
    if first_trained_layer is None:
        programs[PROGRAM_FILE], report = compile_program(TrainingProgram(peft_model, loss_positions), (ids, labels),
                                                         train=True, kernels=kernels, timed=timed)
    else:
        prefix = PrefixProgram(peft_model, first_trained_layer)
        with prefix.cut():
            programs[PREFIX_PROGRAM_FILE], prefix_report = _compiled_prefix(prefix, ids, kernels, timed, program_cache)
            hidden = prefix(ids)
        top = TopTrainingProgram(peft_model, first_trained_layer, loss_positions)
        with top.cut():
            programs[PROGRAM_FILE], report = compile_program(top, (hidden.detach(), labels), train=True,
                                                             kernels=kernels, timed=timed)
        report["prefix"] = prefix_report

    def write():
        for name, program in programs.items():
            with open(out_dir / name, "wb") as f:
                if isinstance(program, bytes):   # a prefix compiled before (program_cache)
                    f.write(program)
                else:
                    program.write_to_file(f)
        # The exporter's own .ptd deduplicates identical tensors (every zero lora_B would share
        # one buffer, so training one would train them all): write our own, one buffer each.
        write_adapter_ptd(trainable_adapter_tensors(peft_model), out_dir / ADAPTER_DATA_FILE)

    timed("write", write)
    return {"stage_seconds": timed.seconds, "kernels": kernels, **report}


def trainable_adapter_tensors(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's LoRA weights under PEFT adapter-file keys, in a stable order."""
    tensors = {}
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            tensors[peft_key(f"{_WRAPPER_ATTRIBUTE}.{name}")] = param.detach().clone()
    return dict(sorted(tensors.items()))


# --- .ptd read/write ---------------------------------------------------------------------------

def write_adapter_ptd(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write PEFT-keyed float32 LoRA tensors as the ExecuTorch flat-tensor file the program loads.

    Every tensor gets its own buffer (no deduplication), since the runtime trains them in place.
    """
    arrays = {}
    for key in sorted(tensors):
        tensor = tensors[key]
        if tensor.dtype != torch.float32:
            raise ValueError(f"LoRA tensor {key} is {tensor.dtype}; the training program expects float32")
        arrays[key] = tensor.detach().contiguous().cpu().numpy()
    Path(path).write_bytes(ptd_bytes(arrays))


def read_adapter_ptd(path: Path) -> dict[str, torch.Tensor]:
    """Read a LoRA ``.ptd`` back into PEFT-keyed float32 tensors."""
    try:
        arrays = tensors_from_ptd(Path(path).read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return {key: torch.from_numpy(array) for key, array in arrays.items()}
