"""The ExecuTorch runtime: the C++ runtime the Android app links, driven through its Python bindings.

Trains ``executorch`` artifacts (:mod:`export.formats.executorch`) with
:class:`fleet.runtime_executorch.ExecuTorchTrainer`: the start adapter is a ``.ptd`` loaded
beside the program, every optimizer setting is taken at run time, and a frozen-prefix cache
serves artifacts that ship a prefix program.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from fleet.runtimes.base import Runtime, Trainer, register

if TYPE_CHECKING:
    from fleet.prefix_cache import PrefixCache


@register
class ExecuTorchRuntime(Runtime):
    name = "executorch"

    def set_threads(self, threads: int) -> None:
        """ExecuTorch's threadpool (XNNPACK's kernels run on it) is one per process."""
        from fleet.runtime_executorch import set_runtime_threads

        set_runtime_threads(threads)

    def trainer(self, artifact_dir: Path, manifest: Mapping, start_adapter: Path, train: Mapping, *,
                threads: int | None = None, cache_dir: Path | None = None,
                prefix_cache: PrefixCache | None = None) -> Trainer:
        from fleet.runtime_executorch import ExecuTorchTrainer

        return ExecuTorchTrainer.for_artifact(artifact_dir, manifest, start_adapter, lr=train["lr"],
                                              momentum=train.get("momentum", 0.0),
                                              weight_decay=train.get("weight_decay", 0.0),
                                              cache_dir=cache_dir, optimizer=train.get("optimizer", "sgd"),
                                              betas=tuple(train.get("betas", (0.9, 0.999))),
                                              eps=train.get("eps", 1e-8), prefix_cache=prefix_cache)
