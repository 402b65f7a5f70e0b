"""Lowering PocketTune programs to XNNPACK, safely for training.

XNNPACK is ExecuTorch's CPU backend for phones (ARM NEON/SVE, x86 AVX2/AVX-512): its matrix
multiplies and element-wise kernels run on the runtime's threadpool, where the portable
kernels are scalar-ish and single-threaded. Two things make a stock partitioner wrong or slow
for a *training* program:

- **It would bake the trained weights in.** XNNPACK treats any parameter a partition consumes
  as a constant and packs it into the delegate at load time. For a LoRA weight that means
  the optimizer updates the runtime's tensor while the delegate keeps multiplying by the
  initial copy: the loss never moves. :class:`FrozenWeightsXnnpackPartitioner` refuses every
  node that reads a trained parameter; those (tiny, rank-r) products stay on the portable
  kernels, reading the live weights.
- **Its matrix-multiply rule is quadratic in graph size.** The stock ``mm`` rule looks up the
  ``nn.Linear`` source partitions of the *whole graph* for every ``mm`` node; a SmolLM2 joint
  graph has hundreds of them. After :mod:`export.graph_passes` every ``mm`` left is a plain
  backward product (no source linear to recover), so :class:`_BackwardMatmulConfig` checks
  the node itself.
"""

from __future__ import annotations

from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
from executorch.backends.xnnpack.partition.config.gemm_configs import GEMMConfig, MMConfig
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

from export.graph_passes import trainable_placeholders


class _BackwardMatmulConfig(MMConfig):
    """XNNPACK's ``mm`` rule without the per-node search for ``nn.Linear`` source partitions."""

    def get_deps(self, node, ep):
        return GEMMConfig.get_deps(self, node, ep)


_CONFIGS = [(_BackwardMatmulConfig if config is MMConfig else config) for config in ALL_PARTITIONER_CONFIGS]


class FrozenWeightsXnnpackPartitioner(XnnpackPartitioner):
    """The XNNPACK partitioner, minus any node that reads (or would pack) a trained parameter."""

    def __init__(self, **kwargs):
        super().__init__(configs=_CONFIGS, **kwargs)
        self._trained_cache: tuple[int, set[str]] | None = None
        for config in self.target_partitioner_configs.values():
            config.check_constraints = self._refusing_trained(config)

    def _trained(self, ep) -> set[str]:
        if self._trained_cache is None or self._trained_cache[0] != id(ep):
            self._trained_cache = (id(ep), trainable_placeholders(ep))
        return self._trained_cache[1]

    def _refusing_trained(self, config):
        stock_check = config.check_constraints

        def check(node, ep) -> bool:
            trained = self._trained(ep)
            if any(arg.op == "placeholder" and arg.name in trained for arg in node.all_input_nodes):
                return False
            if not stock_check(node, ep):
                return False
            return not any(dep.op == "placeholder" and dep.name in trained for dep in config.get_partition(node, ep))

        return check
