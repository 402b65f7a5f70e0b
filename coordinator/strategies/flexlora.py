"""FlexLoRA: average the devices' full LoRA updates, then factor the mean back to rank ``R`` by SVD.

Per module, each device's update is its product ``P_i = B_i @ A_i`` (``out x in``, from the
lifted factors, so a rank-``r_i`` device contributes exactly its own rank-``r_i`` update; the
LoRA scale is the same constant for every rank, so products of different ranks add up).
Element ``(o, j)`` is covered by a device that trained the module and has output row ``o`` and
input column ``j``; with ``w_i`` the weights of :meth:`FedAvg.weights` and ``C`` the devices
covering the element::

    P[o, j] = sum_{i in C} w_i P_i[o, j] / sum_{i in C} w_i     ((B_0 @ A_0)[o, j] when C is empty)

Unlike averaging ``A`` and ``B`` separately (:mod:`~coordinator.strategies.fedavg`), this mean is
the exact weighted mean of the updates. Its rank can reach the sum of the devices' ranks, so it
is cut back to the reference rank ``R``: with ``P = U S V^T``::

    B = U[:, :R] * sqrt(S[:R])        A = sqrt(S[:R])[:, None] * V^T[:R]

the singular values split evenly between the factors so that neither dominates the other's
gradient scale. ``B @ A`` is the best rank-``R`` approximation of ``P`` (Eckart-Young). The
factors are in singular-value order, so a device that takes the first ``r_i`` components
(``A[:r_i]``, ``B[:, :r_i]``) gets exactly the best rank-``r_i`` approximation of ``P``: the
rank truncation each device gets is the slicing the coordinator already does.

Two edge cases:

- A module nobody trained keeps ``current`` exactly, with no SVD: were its ``B`` zero (a fresh
  LoRA), the SVD of the zero product would zero ``A`` too and the module could never learn again.
- A component whose singular value is negligible (``s_k <= 1e-6 * s_0``, or every ``s`` zero, or
  ``k`` beyond ``min(out, in)``) gets a zero ``B`` column and keeps ``current``'s ``A`` row: the
  product is unchanged, and the component stays trainable, like a freshly initialised LoRA
  rank.

Computed in float64, stored as float32. Tensors that are not part of a LoRA ``A``/``B`` pair
are averaged as FedAvg does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.strategies.base import (ClientUpdate, Tensors, channel_masks, lora_keys, module_prefixes,
                                         register)
from coordinator.strategies.fedavg import FedAvg

#: A singular value at or below this fraction of the largest is treated as zero.
NEGLIGIBLE = 1e-6


@register
class FlexLoRA(FedAvg):
    """Example-weighted mean of the devices' products ``B @ A``, refactored to rank ``R`` by SVD."""

    name = "flexlora"

    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate], *,
                        previous: Tensors | None = None) -> dict[str, np.ndarray]:
        if not updates:
            return super().aggregate_train(current, updates)
        weights = self.weights(updates)
        aggregated: dict[str, np.ndarray] = {}
        for prefix in module_prefixes(current):
            a_key, b_key = lora_keys(prefix)
            if a_key in current and b_key in current:
                aggregated[a_key], aggregated[b_key] = self.aggregate_module(
                    prefix, current[a_key], current[b_key], updates, weights)
        rest = {key: value for key, value in current.items() if key not in aggregated}
        if rest:
            aggregated.update(super().aggregate_train(rest, updates))
        return {key: aggregated[key] for key in current}

    def aggregate_module(self, prefix: str, a_start: np.ndarray, b_start: np.ndarray,
                         updates: Sequence[ClientUpdate], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The new ``(A, B)`` of module ``prefix`` from its round-start factors and the updates."""
        a_start = np.asarray(a_start, dtype=np.float64)
        b_start = np.asarray(b_start, dtype=np.float64)
        out_features, in_features = b_start.shape[0], a_start.shape[1]
        masks = [np.outer(*channel_masks(update, prefix, out_features, in_features)) for update in updates]
        if not any(mask.any() for mask in masks):
            return a_start.astype(np.float32), b_start.astype(np.float32)
        a_key, b_key = lora_keys(prefix)
        products = []
        for update, mask in zip(updates, masks):
            if mask.any():
                b, a = (np.asarray(update.tensors[key], dtype=np.float64) for key in (b_key, a_key))
                products.append(b @ a)
            else:  # a device without the module has no vote, and need not even hold its tensors
                products.append(np.zeros((out_features, in_features)))
        mean = self.masked_mean(b_start @ a_start, products, weights, masks)
        return self.factorize(mean, a_start)

    @staticmethod
    def factorize(product: np.ndarray, a_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(A, B)`` of rank ``len(a_start)`` with ``B @ A`` the best such approximation of ``product``.

        Negligible components get a zero ``B`` column and keep ``a_start``'s row (float32 out).
        """
        rank = a_start.shape[0]
        u, s, vt = np.linalg.svd(np.asarray(product, dtype=np.float64), full_matrices=False)
        singular = np.zeros(rank)
        kept = min(rank, s.size)
        singular[:kept] = s[:kept]
        significant = singular > NEGLIGIBLE * singular[0]
        root = np.sqrt(singular)
        a = np.array(a_start, dtype=np.float64, copy=True)
        b = np.zeros((product.shape[0], rank))
        for k in np.flatnonzero(significant):
            b[:, k] = u[:, k] * root[k]
            a[k] = root[k] * vt[k]
        return a.astype(np.float32), b.astype(np.float32)
