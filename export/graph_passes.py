"""Graph rewrites applied to the joint forward/backward graph before lowering to ExecuTorch.

Each pass is a plain function over an ``ExportedProgram`` that returns how many nodes it
changed, so the exporter can report what it did and tests can check that a pass fired.
"""

from __future__ import annotations

import torch


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
