"""The strategy interface: how a round is configured for devices and how updates are combined.

Modelled on Flower's strategies, reduced to what PocketTune's rounds need. A strategy sees
LoRA tensors as numpy arrays keyed by PEFT adapter key (``...lora_A.weight``,
``...lora_B.weight``); it never touches the database, the blob store or HTTP, so it is a pure
function of its inputs and testable by hand computation. A new algorithm is one file in
this package that subclasses :class:`Strategy` (or :class:`~coordinator.strategies.fedavg.FedAvg`,
overriding only what differs), decorated with :func:`register`, plus one import line in
``__init__.py``.

**Heterogeneous devices.** A device may train only a sub-part of the global ("reference")
adapter: fewer layers (whole modules missing), a lower rank ``r_i <= R`` (only the first
``r_i`` rank components: rows ``[:r_i]`` of ``A`` and columns ``[:r_i]`` of ``B``) and pruned
channels (only some output rows of ``B``, some input columns of ``A``). The coordinator lifts
every device's tensors into the reference layout before a strategy sees them: lifted tensors
have the reference shapes and are zero outside the part the device trained. Which part that
is, :attr:`ClientUpdate.trained` says module by module (a :class:`TrainedPart` per module
prefix, the key without ``.lora_A.weight``/``.lora_B.weight``); ``None`` there means the whole
reference adapter, the homogeneous case. Strategies read it only through
:func:`channel_masks`, :func:`coverage_masks` and :func:`coverage_by_key`, so what "covered"
means is decided here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from models.plugin_registry import Registry

Tensors = Mapping[str, np.ndarray]

LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"


@dataclass(frozen=True)
class TrainedPart:
    """Which part of one reference LoRA module a device trained."""

    rank: int                       # first `rank` components (A rows [:rank], B columns [:rank])
    rows: np.ndarray | None = None  # reference output rows (B rows) it has; None = all
    cols: np.ndarray | None = None  # reference input columns (A columns) it has; None = all

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"a trained rank cannot be negative, got {self.rank}")


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted upload: the device's adapter values after local training, and its metadata."""

    tensors: Tensors
    num_examples: int
    device_id: int = 0
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    extra: Mapping = field(default_factory=dict)
    #: The part of each module the device trained, keyed by module prefix; ``None``: all of
    #: the reference adapter. A prefix missing from a mapping: the device lacks that module.
    trained: Mapping[str, TrainedPart] | None = None


def lora_keys(prefix: str) -> tuple[str, str]:
    """The ``(lora_A, lora_B)`` keys of module ``prefix``."""
    return prefix + LORA_A_SUFFIX, prefix + LORA_B_SUFFIX


def module_prefixes(tensors: Iterable[str]) -> list[str]:
    """The LoRA module prefixes among ``tensors``' keys, each once, in order of first appearance."""
    prefixes: dict[str, None] = {}
    for key in tensors:
        for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX):
            if key.endswith(suffix):
                prefixes[key[: -len(suffix)]] = None
    return list(prefixes)


def _index_mask(size: int, indices: np.ndarray | None, what: str) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    if indices is None:
        mask[:] = True
        return mask
    indices = np.asarray(indices, dtype=np.intp)
    if indices.size and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"{what} {indices.tolist()} fall outside the reference's {size}")
    mask[indices] = True
    return mask


def channel_masks(update: ClientUpdate, prefix: str, out_features: int,
                  in_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the reference output rows and input columns ``update`` has in ``prefix``.

    Both are all-True when the update trained the whole adapter, all-False when it lacks the
    module.
    """
    if update.trained is None:
        return np.ones(out_features, dtype=bool), np.ones(in_features, dtype=bool)
    part = update.trained.get(prefix)
    if part is None:
        return np.zeros(out_features, dtype=bool), np.zeros(in_features, dtype=bool)
    return (_index_mask(out_features, part.rows, f"{prefix}: rows"),
            _index_mask(in_features, part.cols, f"{prefix}: columns"))


def coverage_masks(update: ClientUpdate, prefix: str, a_shape: tuple[int, int], b_shape: tuple[int, int],
                   *, pad_rank: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks, shaped like ``A`` and ``B`` of module ``prefix``, of what ``update`` covers.

    An element is covered when the device trained the module, has its channel (the ``B`` row,
    the ``A`` column) and, unless ``pad_rank``, its rank component. With ``pad_rank`` the
    components beyond the device's rank count as covered: they are votes for zero, which is
    what the device's own adapter holds there.
    """
    rank, in_features = a_shape
    out_features = b_shape[0]
    rows, cols = channel_masks(update, prefix, out_features, in_features)
    components = np.ones(rank, dtype=bool)
    part = None if update.trained is None else update.trained.get(prefix)
    if part is not None:
        if part.rank > rank:
            raise ValueError(f"{prefix}: trained rank {part.rank} exceeds the reference rank {rank}")
        if not pad_rank:
            components[part.rank:] = False
    return np.outer(components, cols), np.outer(rows, components)


def coverage_by_key(update: ClientUpdate, current: Tensors, *, pad_rank: bool = False) -> dict[str, np.ndarray]:
    """For every key of ``current``, the boolean mask of the elements ``update`` covers.

    LoRA factors get :func:`coverage_masks`; any other tensor is described by no
    :class:`TrainedPart`, so only an update that trained the whole adapter covers it.
    """
    masks = {}
    for prefix in module_prefixes(current):
        a_key, b_key = lora_keys(prefix)
        if a_key in current and b_key in current:
            masks[a_key], masks[b_key] = coverage_masks(update, prefix, current[a_key].shape,
                                                        current[b_key].shape, pad_rank=pad_rank)
    for key, value in current.items():
        if key not in masks:
            masks[key] = np.full(np.shape(value), update.trained is None, dtype=bool)
    return {key: masks[key] for key in current}


class Strategy(ABC):
    """An aggregation algorithm. Instances are stateless; one is made per use."""

    #: The name jobs use (``"strategy": "fedavg"``).
    name: ClassVar[str]
    #: Whether :meth:`aggregate_train` needs ``previous``, the global adapter the round before
    #: started from. A server optimizer with momentum keeps no state of its own: its last step
    #: is ``current - previous``, stored by the coordinator anyway, so a restart loses nothing.
    uses_previous_adapter: ClassVar[bool] = False

    def configure_train(self, round_number: int, train: dict) -> dict:
        """The ``train`` section devices get for ``round_number`` (add algorithm settings here)."""
        return dict(train)

    @abstractmethod
    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate], *,
                        previous: Tensors | None = None) -> dict[str, np.ndarray]:
        """The next global adapter from the round's start adapter ``current`` and its ``updates``.

        ``updates`` may be empty (a round that reached its deadline with no result); every
        returned tensor must have the key, shape and dtype (float32) of ``current``.
        ``previous`` is the adapter the round before started from, given only to strategies
        that set :attr:`uses_previous_adapter` (``None`` in a job's first round).
        """


#: Every aggregation strategy, by the name jobs use; members register with :func:`register`.
STRATEGIES: Registry[Strategy] = Registry("strategy")

#: Class decorator: make a :class:`Strategy` subclass available to jobs under its ``name``.
register = STRATEGIES.register


def strategy_names() -> list[str]:
    """Names of the registered strategies, sorted."""
    return STRATEGIES.names()


def get_strategy(name: str) -> Strategy:
    """A fresh instance of the strategy registered as ``name`` (``KeyError`` if unknown)."""
    return STRATEGIES.get(name)
