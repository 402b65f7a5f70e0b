"""Graph rewrites applied to the joint forward/backward graph before lowering to ExecuTorch.

Each pass is a plain function over an ``ExportedProgram`` that returns how many nodes it
changed, so the exporter can report what it did and tests can check that a pass fired.

Why the frozen-weight passes exist: ``nn.Linear`` reaches the joint graph decomposed as
``mm(x, permute(W))`` in the forward and ``mm(grad, permute(permute(W)))`` in the backward.
Lowered as is, the runtime transposes every frozen weight on every step (``permute_copy``,
about a sixth of a SmolLM2 step), and XNNPACK declines the matrix multiplies because their
weight is computed rather than a constant. After the passes, a frozen weight reaches the
forward as ``linear(x, W)`` and the backward as ``mm(grad, W)``, both with ``W`` itself: a
constant XNNPACK packs once at load time, in the layout each side needs.
"""

from __future__ import annotations

import re

import torch
from torch.export.graph_signature import InputKind, OutputKind

_TRANSPOSE = [1, 0]
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")
_WEIGHT_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def replace_empty_permuted(program) -> int:
    """Rewrite ``aten.empty_permuted`` to ``aten.empty``.

    SiLU's backward allocates its output with ``empty_permuted``, which the ExecuTorch runtime
    has no kernel for ("Missing operator ... empty_permuted.out"). In these graphs the
    requested layout is always the identity permutation of a contiguous tensor, so a plain
    ``empty`` of the same size, dtype and device is equivalent.
    """
    graph = program.graph
    changed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.empty_permuted.default:
            continue
        size, permutation = node.args[0], node.args[1]
        if list(permutation) != sorted(permutation):
            raise NotImplementedError(f"empty_permuted with a non-identity layout {permutation} at {node.name}")
        with graph.inserting_before(node):
            replacement = graph.call_function(torch.ops.aten.empty.memory_format, (size,), dict(node.kwargs))
            replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        changed += 1
    if changed:
        program.graph_module.recompile()
    return changed


# --- which placeholders are trained, which are frozen ------------------------------------------

def trainable_targets(program) -> list[str]:
    """Fully qualified names of the parameters the program returns a gradient for."""
    return [spec.target for spec in program.graph_signature.output_specs
            if spec.kind == OutputKind.GRADIENT_TO_PARAMETER]


def trainable_placeholders(program) -> set[str]:
    """Graph names of the placeholders holding trained parameters."""
    trained = set(trainable_targets(program))
    return {spec.arg.name for spec in program.graph_signature.input_specs if spec.target in trained}


def frozen_placeholders(program) -> dict[str, str]:
    """Graph name -> fully qualified name of every weight, buffer or constant that is not trained."""
    trained = set(trainable_targets(program))
    return {spec.arg.name: spec.target for spec in program.graph_signature.input_specs
            if spec.kind in _WEIGHT_KINDS and spec.target not in trained}


def _is_transpose(node) -> bool:
    return (node.op == "call_function" and node.target == torch.ops.aten.permute.default
            and list(node.args[1]) == _TRANSPOSE)


def _is_frozen(node, frozen: dict[str, str]) -> bool:
    return node.op == "placeholder" and node.name in frozen


# --- the passes --------------------------------------------------------------------------------

def fold_frozen_double_transposes(program) -> int:
    """``permute(permute(W))`` -> ``W`` for frozen ``W`` (the backward's view of a forward transpose).

    Trained weights are left alone on purpose: a matrix multiply whose weight is a trained
    parameter *placeholder* would look like a constant to a backend, which would bake it in.
    """
    frozen = frozen_placeholders(program)
    changed = 0
    for node in list(program.graph.nodes):
        if _is_transpose(node) and _is_transpose(node.args[0]) and _is_frozen(node.args[0].args[0], frozen):
            node.replace_all_uses_with(node.args[0].args[0])
            changed += 1
    if changed:
        program.graph.eliminate_dead_code()
        program.graph_module.recompile()
    return changed


def frozen_matmuls_to_linear(program) -> int:
    """``mm(x, permute(W))`` -> ``linear(x, W)`` for frozen ``W``: no transpose at run time."""
    frozen = frozen_placeholders(program)
    graph = program.graph
    changed = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.mm.default:
            continue
        activations, weight = node.args
        if not (_is_transpose(weight) and _is_frozen(weight.args[0], frozen)):
            continue
        with graph.inserting_before(node):
            linear = graph.call_function(torch.ops.aten.linear.default, (activations, weight.args[0]))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        graph.erase_node(node)
        changed += 1
    if changed:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return changed


# --- what the backward touches -----------------------------------------------------------------

def backward_weight_use(program) -> dict:
    """Which frozen weights the backward multiplies by, after the passes above.

    Once folded, a frozen weight ``W`` feeds ``linear(x, W)`` in the forward and ``mm(grad, W)``
    wherever a gradient flows through it. Returns ``{"layers": {index: [module, ...]}, "other":
    [...]}``: per decoder layer, the projections a gradient passes through (``q_proj``, ...), and
    the other weights (the LM head). A correct training program lists no layer below the lowest
    LoRA layer, and in that layer not the projections whose input gradient nothing needs.
    """
    frozen = frozen_placeholders(program)
    layers: dict[int, set[str]] = {}
    other = set()
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.mm.default:
            weight = node.args[1]
            if _is_frozen(weight, frozen):
                name = frozen[weight.name]
                match = _LAYER_INDEX.search(name)
                if match:
                    layers.setdefault(int(match.group(1)), set()).add(_projection_name(name))
                else:
                    other.add(name)
    return {"layers": {index: sorted(modules) for index, modules in sorted(layers.items())}, "other": sorted(other)}


def _projection_name(fqn: str) -> str:
    """``….layers.3.self_attn.q_proj.base_layer.weight`` -> ``q_proj``."""
    parts = [part for part in fqn.split(".") if part not in ("weight", "base_layer")]
    return parts[-1]
