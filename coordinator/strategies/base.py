"""The strategy interface: how a round is configured for devices and how updates are combined.

Modelled on Flower's strategies, reduced to what PocketTune's rounds need. A strategy sees
LoRA tensors as numpy arrays keyed by PEFT adapter key (``...lora_A.weight``,
``...lora_B.weight``); it never touches the database, the blob store or HTTP, so it is a pure
function of its inputs and testable by hand computation. A new algorithm is one file in
this package that subclasses :class:`Strategy` (or :class:`~coordinator.strategies.fedavg.FedAvg`,
overriding only what differs), decorated with :func:`register`, plus one import line in
``__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

Tensors = Mapping[str, np.ndarray]

_REGISTRY: dict[str, type["Strategy"]] = {}


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted upload: the device's adapter values after local training, and its metadata."""

    tensors: Tensors
    num_examples: int
    device_id: int = 0
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    extra: Mapping = field(default_factory=dict)


class Strategy(ABC):
    """An aggregation algorithm. Instances are stateless; one is made per use."""

    #: The name jobs use (``"strategy": "fedavg"``).
    name: ClassVar[str]

    def configure_train(self, round_number: int, train: dict) -> dict:
        """The ``train`` section devices get for ``round_number`` (add algorithm settings here)."""
        return dict(train)

    @abstractmethod
    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate]) -> dict[str, np.ndarray]:
        """The next global adapter from the round's start adapter ``current`` and its ``updates``.

        ``updates`` may be empty (a round that reached its deadline with no result); every
        returned tensor must have the key, shape and dtype (float32) of ``current``.
        """


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` available to jobs under ``cls.name``."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two strategies named {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """A fresh instance of the strategy registered as ``name`` (``KeyError`` if unknown)."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(strategy_names())}") from None
