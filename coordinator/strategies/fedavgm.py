"""FedAvgM: FedAvg with server momentum, for devices whose data are skewed by label.

Under label skew each round's few devices pull the adapter toward their own classes, and the
round's average follows whichever classes happened to be sampled: the global model swings
from round to round. Server momentum (Hsu, Qi and Brown, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019) keeps a decaying
sum of the rounds' average changes, so a class missing from one round is still pulled toward
by the rounds before it. With ``d_t`` the round's :class:`~coordinator.strategies.fedavg.FedAvg`
change (the example-weighted mean of the devices' new adapters minus the start ``x_t``)::

    m_t     = beta * m_{t-1} + d_t
    x_{t+1} = x_t + eta * m_t

**No state of its own.** ``x_t - x_{t-1} = eta * m_{t-1}``, so the momentum is recovered from
the two last global adapters, which the coordinator stores anyway (``previous``): a restarted
coordinator, a paused job or a round that failed lose nothing, and the strategy stays a pure
function of its inputs. In a job's first round ``m_0 = 0`` and this is FedAvg.

``beta = 0`` with ``eta = 1`` is FedAvg to the bit. The defaults (``beta`` 0.5, ``eta`` 1)
are a moderate starting point, not yet a tuned value: ``bench/federated_tuning.py`` compares
settings on validation data. Heterogeneous updates are averaged exactly as FedAvg averages
them (element by element over the devices covering it) before the momentum is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import ClientUpdate, Tensors, register
from coordinator.strategies.fedavg import FedAvg


@register
class FedAvgM(FedAvg):
    """FedAvg's round change, accumulated with server momentum ``beta`` and applied at rate ``eta``."""

    name = "fedavgm"
    uses_previous_adapter = True
    beta: ClassVar[float] = 0.5
    eta: ClassVar[float] = 1.0

    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate], *,
                        previous: Tensors | None = None) -> dict[str, np.ndarray]:
        averaged = super().aggregate_train(current, updates)
        if previous is not None and set(previous) != set(current):
            raise ValueError("the previous global adapter has other tensors than this round's start: "
                             "a job's adapters must keep one layout")
        stepped = {}
        for key, start in current.items():
            start = np.asarray(start, dtype=np.float64)
            change = np.asarray(averaged[key], dtype=np.float64) - start
            momentum = change
            if previous is not None:
                last = np.asarray(previous[key], dtype=np.float64)
                if last.shape != start.shape:
                    raise ValueError(f"{key}: the previous global adapter has shape {last.shape}, "
                                     f"this round's start {start.shape}")
                momentum = self.beta * (start - last) / self.eta + change
            stepped[key] = (start + self.eta * momentum).astype(np.float32)
        return stepped
