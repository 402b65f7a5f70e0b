"""Compile a LoRA-wrapped causal LM into an ExecuTorch *training* program.

The program has one method, ``forward(ids, labels) -> loss``, with the backward pass inside
(``_export_forward_backward``): the runtime returns the loss, the gradients of the LoRA weights
and the LoRA weights themselves, and the device steps an optimizer on them in place.

The trainable LoRA weights are not baked into the ``.pte``: with ``external_mutable_weights``
they live in a small ``.ptd`` file beside it. A new global adapter therefore ships as a new
``.ptd`` (kilobytes to a few MB) without re-exporting or re-downloading the program
(hundreds of MB). :func:`write_adapter_ptd` and :func:`read_adapter_ptd` convert between
PEFT adapter tensors and that file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from export.graph_passes import replace_empty_permuted
from models.batching import IGNORE_INDEX

PROGRAM_FILE = "model.pte"
ADAPTER_DATA_FILE = "lora.ptd"
#: Tensors in a .ptd are aligned to this many bytes (enough for any SIMD load on phones).
_PTD_ALIGNMENT = 64

_WRAPPER_ATTRIBUTE = "model"
_ADAPTER_NAME = "default"

ExportStageCallback = Callable[[str], None]


class LanguageModelLoss(torch.nn.Module):
    """``forward(ids, labels)`` -> mean next-token cross-entropy over labels != -100.

    Shapes are fixed at export ([batch, seq]); devices pad with label -100, which the loss
    ignores, so short examples cost compute but never change the gradient.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        setattr(self, _WRAPPER_ATTRIBUTE, model)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = getattr(self, _WRAPPER_ATTRIBUTE)(input_ids=ids, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)


# --- tensor names: PEFT adapter keys <-> keys inside the training program ---------------------

def program_key(peft_key: str) -> str:
    """``base_model.model.….lora_A.weight`` (PEFT file) -> ``model.base_model.model.….lora_A.default.weight``."""
    head, _, leaf = peft_key.rpartition(".")
    return f"{_WRAPPER_ATTRIBUTE}.{head}.{_ADAPTER_NAME}.{leaf}"


def peft_key(program_tensor_key: str) -> str:
    """Inverse of :func:`program_key`."""
    prefix = _WRAPPER_ATTRIBUTE + "."
    suffix_marker = f".{_ADAPTER_NAME}."
    if not program_tensor_key.startswith(prefix) or suffix_marker not in program_tensor_key:
        raise ValueError(f"{program_tensor_key!r} is not a LoRA tensor of a PocketTune training program")
    body = program_tensor_key[len(prefix):]
    head, _, leaf = body.rpartition(".")
    if not head.endswith("." + _ADAPTER_NAME):
        raise ValueError(f"{program_tensor_key!r} is not a LoRA tensor of a PocketTune training program")
    return f"{head[: -len(_ADAPTER_NAME) - 1]}.{leaf}"


# --- export ------------------------------------------------------------------------------------

def example_inputs(batch: int, seq: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that fix the program's shapes. ``labels`` is a distinct tensor: if both arguments
    were the same object, export would merge them into one input."""
    ids = torch.arange(batch * seq, dtype=torch.long).reshape(batch, seq) % vocab_size
    return ids, ids.clone()


def export_training_program(peft_model: torch.nn.Module, batch: int, seq: int, out_dir: Path,
                            on_stage: ExportStageCallback | None = None) -> dict:
    """Write ``model.pte`` and ``lora.ptd`` for ``peft_model`` into ``out_dir``.

    Returns a report with the time of each stage and what the graph passes changed.
    ``on_stage`` is called with each stage's name before it starts (for progress displays).
    """
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
    from torch.export import export
    from torch.export.experimental import _export_forward_backward
    from torch.nn.attention import SDPBackend, sdpa_kernel

    notify = on_stage or (lambda stage: None)
    out_dir = Path(out_dir)
    module = LanguageModelLoss(peft_model)
    inputs = example_inputs(batch, seq, peft_model.config.vocab_size)
    timings: dict[str, float] = {}

    def timed(stage: str, fn):
        notify(stage)
        start = time.perf_counter()
        result = fn()
        timings[stage] = round(time.perf_counter() - start, 3)
        return result

    # The math SDPA kernel decomposes into ops the runtime has, with a differentiable backward.
    with sdpa_kernel([SDPBackend.MATH]):
        program = timed("export", lambda: export(module, inputs, strict=False))
        program = timed("forward_backward", lambda: _export_forward_backward(program))
    rewritten = replace_empty_permuted(program)
    edge = timed("to_edge", lambda: to_edge(program, compile_config=EdgeCompileConfig(_check_ir_validity=False)))
    executorch_program = timed("to_executorch", lambda: edge.to_executorch(
        ExecutorchBackendConfig(external_mutable_weights=True)))

    def write():
        with open(out_dir / PROGRAM_FILE, "wb") as f:
            executorch_program.write_to_file(f)
        # The exporter's own .ptd deduplicates identical tensors (every zero lora_B would share
        # one buffer, so training one would train them all): write our own, one buffer each.
        write_adapter_ptd(trainable_adapter_tensors(peft_model), out_dir / ADAPTER_DATA_FILE)

    timed("write", write)
    return {"stage_seconds": timings, "empty_permuted_rewritten": rewritten}


def trainable_adapter_tensors(peft_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's LoRA weights under PEFT adapter-file keys, in a stable order."""
    tensors = {}
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            tensors[peft_key(f"{_WRAPPER_ATTRIBUTE}.{name}")] = param.detach().clone()
    return dict(sorted(tensors.items()))


# --- .ptd read/write ---------------------------------------------------------------------------

def write_adapter_ptd(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write PEFT-keyed LoRA tensors as an ExecuTorch flat-tensor file the program loads.

    Every tensor gets its own buffer (no deduplication), since the runtime trains them in place.
    """
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.exir.scalar_type import ScalarType
    from executorch.exir.tensor_layout import TensorLayout
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    buffers, entries = [], {}
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous().cpu()
        if tensor.dtype != torch.float32:
            raise ValueError(f"LoRA tensor {key} is {tensor.dtype}; the training program expects float32")
        layout = TensorLayout(scalar_type=ScalarType.FLOAT, sizes=list(tensor.shape),
                              dim_order=list(range(tensor.dim())))
        entries[program_key(key)] = DataEntry(buffer_index=len(buffers), alignment=_PTD_ALIGNMENT,
                                              tensor_layout=layout)
        buffers.append(tensor.numpy().tobytes())
    blob = FlatTensorSerializer().serialize(DataPayload(buffers=buffers, named_data=entries))
    with open(path, "wb") as f:
        blob.write_to_file(f)


def read_adapter_ptd(path: Path) -> dict[str, torch.Tensor]:
    """Read a LoRA ``.ptd`` back into PEFT-keyed float32 tensors."""
    from executorch.exir._serialize._cord import Cord
    from executorch.exir.scalar_type import ScalarType
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    payload = FlatTensorSerializer().deserialize(Cord(Path(path).read_bytes()))
    tensors = {}
    for key, entry in payload.named_data.items():
        layout = entry.tensor_layout
        if layout is None or layout.scalar_type != ScalarType.FLOAT:
            raise ValueError(f"{path}: entry {key} is not a float32 tensor")
        raw = bytearray(payload.buffers[entry.buffer_index])
        count = 1
        for size in layout.sizes:
            count *= size
        tensor = torch.frombuffer(raw, dtype=torch.float32, count=count).reshape(layout.sizes).clone()
        tensors[peft_key(key)] = tensor
    return dict(sorted(tensors.items()))
