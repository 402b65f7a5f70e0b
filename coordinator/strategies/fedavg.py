"""FedAvg over LoRA parameters: each tensor is the example-weighted mean of the devices' tensors.

With updates ``i = 1..K`` carrying ``n_i`` training examples, weights ``w_i = n_i / sum_j n_j``
and every LoRA tensor ``T`` (each ``lora_A`` and each ``lora_B`` separately)::

    T_global = sum_i w_i * T_i

computed in float64 and stored as float32. Weighting by examples is McMahan et al.'s FedAvg:
it is the gradient-descent step on the union of the devices' data when local steps are few.
Since every device of a round starts from the same global adapter ``T_0``, averaging the new
values equals applying the weighted mean of the deltas: ``T_0 + sum_i w_i (T_i - T_0)``.

**How A and B are combined, and the error this makes.** A LoRA layer's weight change is the
product ``dW = s * B @ A`` (``A``: r x in, ``B``: out x r, ``s = alpha / r``). Averaging the
factors separately gives ``B_avg @ A_avg``, which is not the average of the devices' products::

    sum_i w_i B_i A_i  =  B_avg A_avg  +  sum_i w_i (B_i - B_avg)(A_i - A_avg)

The second term (a weighted covariance of the factors across devices) is what separate
averaging drops. It is zero when all devices agree on either factor and small when their
updates are close, which is the regime of few local steps from a shared start. Averaging the
products instead would be exact but gives a matrix of rank up to ``K * r``: it no longer fits
a rank-``r`` adapter, so it would need an SVD truncation (that is FlexLoRA, a separate
strategy) and a device could not load it into its fixed-shape program. Separate averaging
is what "FedAvg on the LoRA parameters" means, keeps the adapter's shapes, and is what this
strategy does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from coordinator.strategies.base import ClientUpdate, Strategy, Tensors, register


@register
class FedAvg(Strategy):
    """Example-weighted average of every LoRA tensor (A and B averaged separately)."""

    name = "fedavg"

    def weights(self, updates: Sequence[ClientUpdate]) -> np.ndarray:
        """Each update's weight: its share of the round's training examples."""
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        if (counts <= 0).any():
            raise ValueError("every update must report a positive number of examples")
        return counts / counts.sum()

    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate]) -> dict[str, np.ndarray]:
        if not updates:
            return {key: np.array(value, dtype=np.float32, copy=True) for key, value in current.items()}
        weights = self.weights(updates)
        aggregated = {}
        for key, start in current.items():
            total = np.zeros(start.shape, dtype=np.float64)
            for weight, update in zip(weights, updates):
                total += weight * np.asarray(update.tensors[key], dtype=np.float64)
            aggregated[key] = total.astype(np.float32)
        return aggregated
