"""What every device runtime answers: load an artifact's trainer, with the round's start adapter.

A device runtime is the on-device training engine for one artifact format
(:mod:`export.formats`), under the same name: the device declares the runtimes it has, the
coordinator sends artifacts in one of those formats, and the device asks
:func:`get_runtime` (``manifest["format"]``) for the engine that trains it. Whatever the
engine, the trainer it returns has one surface (:class:`Trainer`), so the device loop, the
export check (:mod:`fleet.verify`) and the calibration never ask which engine they drive.

A new runtime (LiteRT, Core ML) is a :class:`Runtime` subclass in ``fleet/runtimes/<name>.py``
decorated with :func:`register`, plus one import line in ``fleet/runtimes/__init__.py``; its
artifact format is the same two steps in ``export/formats/``. Runtime modules are imported by
every device at start: they import their engine (ExecuTorch's bindings, onnxruntime) inside
:meth:`Runtime.trainer`, never at module level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from models.plugin_registry import Registry

if TYPE_CHECKING:
    import torch

    from fleet.prefix_cache import PrefixCache


class Trainer(Protocol):
    """A loaded training program with the round's start adapter in it.

    ``prefix`` is the frozen-prefix cache when the artifact ships a prefix program (else None);
    :meth:`prepare` fills it for the round's batches before the first step.
    """

    prefix: PrefixCache | None

    def prepare(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None: ...

    def step(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """One training step on a [batch, seq] batch; returns the loss before the update."""

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> float:
        """The loss on a batch without updating anything."""

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        """The current LoRA weights under PEFT adapter-file keys (copies)."""

    def load_adapter(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the trained LoRA values mid-training (PEFT keys; after the first step), as
        HetLoRA's rank penalty does between steps (``models/rank_pruning.py``)."""


class Runtime(ABC):
    """One on-device training engine; subclasses set ``name`` and implement :meth:`trainer`."""

    #: The artifact format this runtime trains (the same name in :mod:`export.formats`).
    name: ClassVar[str]

    def set_threads(self, threads: int) -> None:
        """Size the engine's process-wide threadpool (0: leave its default). Engines that take a
        thread count per session (see :meth:`trainer`) have nothing to do here."""

    def settings_mismatch(self, manifest: Mapping, train: Mapping) -> str | None:
        """Why this artifact cannot train with the settings ``train`` (a task's ``train`` object:
        ``lr``, ``optimizer``, ``momentum``, ...), or None: an engine whose artifacts compile their
        optimizer cannot take another one."""
        return None

    @abstractmethod
    def trainer(self, artifact_dir: Path, manifest: Mapping, start_adapter: Path, train: Mapping, *,
                threads: int | None = None, cache_dir: Path | None = None,
                prefix_cache: PrefixCache | None = None) -> Trainer:
        """The artifact in ``artifact_dir`` loaded for training from ``start_adapter``.

        ``start_adapter`` is a file in the format's start-adapter encoding
        (``export.formats.get_format(name).start_adapter_kind``). ``threads`` is a per-session
        thread count (None: the engine's default). ``prefix_cache`` is a frozen-prefix cache the
        caller keeps across tasks, used if it matches the artifact; otherwise, for an artifact with
        a prefix program, a new one is made in ``cache_dir``.
        """


#: Every device runtime, by the name of the artifact format it trains; members register with
#: :func:`register` (``fleet/runtimes/__init__.py`` imports each member module once).
RUNTIME_REGISTRY: Registry[Runtime] = Registry("device runtime")

#: Class decorator: make a :class:`Runtime` subclass available under its ``name``.
register = RUNTIME_REGISTRY.register


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name`` (``KeyError`` listing the known ones if none is)."""
    return RUNTIME_REGISTRY.get(name)


def runtime_names() -> tuple[str, ...]:
    """The registered runtimes' names, sorted."""
    return tuple(RUNTIME_REGISTRY.names())
