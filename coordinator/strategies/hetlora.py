"""HetLoRA's aggregation (Cho et al., EMNLP 2024): zero-padding with sparsity-weighted devices.

HetLoRA lets each device train its own LoRA rank. The server zero-pads every device's factors
to the reference rank (:mod:`~coordinator.strategies.zero_padding`) and, instead of weighting
devices by their examples, weights each by the Frobenius norm of the weight change its adapter
makes, ``S_k = ||B_k A_k||_F``, normalised over the round: ``p_k = S_k / sum_j S_j``. The
paper's reasoning: a device whose adapter is small (a low rank, or data that asked little of
it) carries little information, and averaging it with full weight would shrink everyone
else's update towards zero ("sparsity" is the paper's word for such a small update).

Choices where the paper leaves room, and why:

- **Per module.** ``S_k`` is computed for each LoRA module separately (its own ``B_k A_k``) and
  weights that module's factors: layers differ in how much they move, and a device that lacks
  a module (a shallower tier) has ``S_k = 0`` there, so it has no vote, as in every strategy
  here. The product is taken in the reference layout after lifting, where a lower rank's extra
  components and pruned channels are zeros, so it is exactly the device's own ``B_k A_k``.
- **Pruned channels are still not votes for zero**, as in zero-padding: the weights ``p_k`` only
  replace the example shares; which elements a device votes for is inherited.
- **All norms zero** (every device returned an all-zero product, as an untrained LoRA with
  ``B = 0`` does): the example shares of :class:`FedAvg` are used instead, so a round can
  always aggregate.
- **A hostile device** could inflate its product to take the round. The coordinator's upload
  validation already bounds each update's distance from the round's start adapter
  (``max_update_norm``, ``norm_clip_factor``; services/validation.py), which bounds ``S_k`` too;
  nothing a device *claims* enters the weight, only the tensors it sent.

**The device side.** HetLoRA's devices also prune their own rank during local training
(:mod:`models.rank_pruning`). A job under this strategy asks every device for it through the
task's ``train.rank_self_pruning`` (:meth:`HetLoRA.configure_train`, with :attr:`HetLoRA.self_pruning`:
penalty strength 10 on the tail beyond half the rank, pruned when it shrank over the round).
A pruned device's update has zeros in its tail, which this aggregation reads as a lower-rank
update; the ``hetlora`` configurator (``coordinator/scheduling/hetlora.py``) then hands it a
tier of the lower rank. The strength is not tuned: the paper gives none for this model, and
with AdamW at the rates used here (4e-3) a strength near 10 is where the penalty's step on the
tail's B factor (``lr * strength * ||A_tail||``) becomes comparable with the optimizer's
(``lr`` per element); ``zero_padding`` is the same aggregation without any of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from coordinator.strategies.base import ClientUpdate, Tensors, lora_keys, module_prefixes, register
from coordinator.strategies.zero_padding import ZeroPadding
from models.rank_pruning import RankSelfPruning


def product_norm(tensors: Tensors, prefix: str) -> float:
    """``||B @ A||_F`` of module ``prefix`` in float64 (the LoRA scale is the same for every
    device of a job, so it cancels in the normalised weights and is left out)."""
    a_key, b_key = lora_keys(prefix)
    return float(np.linalg.norm(np.asarray(tensors[b_key], np.float64) @ np.asarray(tensors[a_key], np.float64)))


@register
class HetLoRA(ZeroPadding):
    """Zero-padding in which each device's weight, per module, is its share of ``||B_k A_k||_F``."""

    name = "hetlora"
    #: what devices are asked to do locally (``models/rank_pruning.py``)
    self_pruning: ClassVar[RankSelfPruning] = RankSelfPruning(strength=10.0, keep=0.5, min_rank=1)

    def configure_train(self, round_number: int, train: dict) -> dict:
        """Devices prune their own rank (HetLoRA's local half)."""
        return {**train, "rank_self_pruning": self.self_pruning.to_dict()}

    def module_weights(self, current: Tensors, updates: Sequence[ClientUpdate]) -> dict[str, np.ndarray]:
        """Per module prefix, each update's weight ``S_k / sum_j S_j`` (example shares if all are 0)."""
        fallback = self.weights(updates)
        weights = {}
        for prefix in module_prefixes(current):
            norms = np.array([product_norm(update.tensors, prefix) if self._trained(update, prefix) else 0.0
                              for update in updates])
            weights[prefix] = norms / norms.sum() if norms.sum() > 0 else fallback
        return weights

    @staticmethod
    def _trained(update: ClientUpdate, prefix: str) -> bool:
        return update.trained is None or prefix in update.trained

    def aggregate_train(self, current: Tensors, updates: Sequence[ClientUpdate], *,
                        previous: Tensors | None = None) -> dict[str, np.ndarray]:
        if not updates:
            return super().aggregate_train(current, updates)
        by_module = self.module_weights(current, updates)
        examples = self.weights(updates)          # also checks every update's example count
        masks = [self.coverage(update, current) for update in updates]
        out = {}
        for key, start in current.items():
            prefix = next((p for p in by_module if key in lora_keys(p)), None)
            weights = examples if prefix is None else by_module[prefix]
            out[key] = self.masked_mean(start, [update.tensors[key] for update in updates], weights,
                                        [mask[key] for mask in masks]).astype(np.float32)
        return out
