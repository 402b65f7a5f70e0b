"""FedAvg over LoRA parameters: each element is the example-weighted mean of the devices covering it.

With updates ``i = 1..K`` carrying ``n_i`` training examples, weights ``w_i = n_i / sum_j n_j``
and every LoRA tensor ``T`` (each ``lora_A`` and each ``lora_B`` separately)::

    T_global = sum_i w_i * T_i

computed in float64 and stored as float32. Weighting by examples is McMahan et al.'s FedAvg:
it is the gradient-descent step on the union of the devices' data when local steps are few.
Since every device of a round starts from the same global adapter ``T_0``, averaging the new
values equals applying the weighted mean of the deltas: ``T_0 + sum_i w_i (T_i - T_0)``.

**Heterogeneous devices.** A device that trained only part of the reference adapter (see
:mod:`coordinator.strategies.base`) votes only for the elements it covers: its modules, its
channels and its first ``r_i`` rank components. Element by element, with ``C`` the updates
covering it::

    T_global[e] = sum_{i in C} w_i T_i[e] / sum_{i in C} w_i      (T_0[e] when C is empty)

so a rank component above a device's rank is averaged only over the devices that have it. In
the homogeneous case every update covers every element and this is the formula above, to the
bit. (Counting the missing rank components as zeros instead is
:mod:`~coordinator.strategies.zero_padding`.)

**How A and B are combined, and the error this makes.** A LoRA layer's weight change is the
product ``dW = s * B @ A`` (``A``: r x in, ``B``: out x r, ``s = alpha / r``). Averaging the
factors separately gives ``B_avg @ A_avg``, which is not the average of the devices' products::

    sum_i w_i B_i A_i  =  B_avg A_avg  +  sum_i w_i (B_i - B_avg)(A_i - A_avg)

The second term (a weighted covariance of the factors across devices) is what separate
averaging drops. It is zero when all devices agree on either factor and small when their
updates are close, which is the regime of few local steps from a shared start. Averaging the
products instead would be exact but gives a matrix of rank up to ``K * r``: it no longer fits
a rank-``r`` adapter, so it would need an SVD truncation (that is FlexLoRA,
:mod:`~coordinator.strategies.flexlora`) and a device could not load it into its fixed-shape
program. Separate averaging is what "FedAvg on the LoRA parameters" means, keeps the adapter's
shapes, and is what this strategy does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.strategies.base import ClientUpdate, Strategy, Tensors, coverage_by_key, register


@register
class FedAvg(Strategy):
    """Example-weighted mean of each LoRA element over the devices that trained it (A, B apart)."""

    name = "fedavg"

    def weights(self, updates: Sequence[ClientUpdate]) -> np.ndarray:
        """Each update's weight: its share of the round's training examples."""
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        if (counts <= 0).any():
            raise ValueError("every update must report a positive number of examples")
        return counts / counts.sum()

    def coverage(self, update: ClientUpdate, current: Tensors) -> dict[str, np.ndarray]:
        """Per key of ``current``, the elements ``update`` votes for: those it trained."""
        return coverage_by_key(update, current)

    @staticmethod
    def masked_mean(start: np.ndarray, values: Sequence[np.ndarray], weights: np.ndarray,
                    masks: Sequence[np.ndarray]) -> np.ndarray:
        """Per element, the ``weights``-mean of ``values`` over the ones whose mask is set (float64).

        ``weights`` sum to one; elements no mask covers keep ``start``.
        """
        total = np.zeros(np.shape(start), dtype=np.float64)
        covered_weight = np.zeros(np.shape(start), dtype=np.float64)
        covering = np.zeros(np.shape(start), dtype=np.intp)
        for weight, value, mask in zip(weights, values, masks):
            total += np.where(mask, weight * np.asarray(value, dtype=np.float64), 0.0)
            covered_weight += np.where(mask, weight, 0.0)
            covering += mask
        # The weights already sum to one, so where everyone votes the sum is the mean; not
        # dividing there keeps the homogeneous result bit-identical to plain FedAvg.
        partial = np.divide(total, covered_weight, out=np.array(start, dtype=np.float64, copy=True),
                            where=covered_weight > 0)
        return np.where(covering == len(values), total, partial)

    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate], *,
                        previous: Tensors | None = None) -> dict[str, np.ndarray]:
        if not updates:
            return {key: np.array(value, dtype=np.float32, copy=True) for key, value in current.items()}
        weights = self.weights(updates)
        masks = [self.coverage(update, current) for update in updates]
        return {key: self.masked_mean(start, [update.tensors[key] for update in updates], weights,
                                      [mask[key] for mask in masks]).astype(np.float32)
                for key, start in current.items()}
