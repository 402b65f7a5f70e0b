"""Coordinate-wise trimmed mean: FedAvg that a few poisoned updates cannot drag far.

FedAvg's mean moves without bound with one device's values: a device that scales its update
by 100 or flips its sign sets the global adapter alone. Yin et al. ("Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018) aggregate each
coordinate separately: sort the devices' values of that element, drop the ``beta`` fraction
at each end, and average the rest. Up to ``beta`` of the devices can then be arbitrarily bad
and move each element only within the range of the honest ones.

Choices made here:

- **Unweighted.** Every update counts once, whatever number of examples it claims: a claimed
  count is the cheapest thing for a hostile device to inflate, and weighting by it would give
  the attacker back the lever trimming takes away.
- **``beta = 0.2``** (:attr:`TrimmedMean.beta`): a fleet where a fifth of the devices misbehave,
  the poisoning case the coordinator's tests use. With ``K`` updates covering an element,
  ``floor(beta * K)`` values are dropped at each end (none when ``K < 5``: with so few
  updates there is nothing to trim and this is their plain mean).
- **Heterogeneous devices**: an element is trimmed and averaged over the updates that
  trained it (:func:`~coordinator.strategies.base.coverage_by_key`); an element none trained
  keeps the round's start value, as in FedAvg.

A and B are aggregated separately, as FedAvg does (see :mod:`~coordinator.strategies.fedavg`
for what that approximation costs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import ClientUpdate, Strategy, Tensors, coverage_by_key, register


@register
class TrimmedMean(Strategy):
    """Per element, the mean of the covering updates' values after dropping the ``beta``
    fraction at each end."""

    name = "trimmed_mean"
    beta: ClassVar[float] = 0.2

    def reduce(self, values: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """``values`` [K, ...] with ``covered`` [K, ...]: the per-element robust mean (NaN where
        nothing covers). Uncovered values sort last (as +inf) and are never counted."""
        count = covered.sum(axis=0)
        ordered = np.sort(np.where(covered, values, np.inf), axis=0)
        trim = np.floor(self.beta * count).astype(np.intp)
        rank = np.arange(values.shape[0]).reshape((-1,) + (1,) * (values.ndim - 1))
        keep = (rank >= trim) & (rank < count - trim)
        kept = keep.sum(axis=0)
        total = np.where(keep, ordered, 0.0).sum(axis=0)
        return np.divide(total, kept, out=np.full(total.shape, np.nan), where=kept > 0)

    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate], *,
                        previous: Tensors | None = None) -> dict[str, np.ndarray]:
        if not updates:
            return {key: np.array(value, dtype=np.float32, copy=True) for key, value in current.items()}
        masks = [coverage_by_key(update, current) for update in updates]
        result = {}
        for key, start in current.items():
            values = np.stack([np.asarray(update.tensors[key], dtype=np.float64) for update in updates])
            covered = np.stack([np.broadcast_to(mask[key], np.shape(start)) for mask in masks])
            reduced = self.reduce(values, covered)
            result[key] = np.where(np.isnan(reduced), np.asarray(start, dtype=np.float64), reduced).astype(np.float32)
        return result

