"""HetLoRA's rank self-pruning (Cho et al., EMNLP 2024): a device sheds the LoRA ranks it does not use.

In HetLoRA each device trains its own rank ``r_k``. During local training it adds to its loss
a penalty on the *tail* of its rank, the components ``[floor(keep * r_k), r_k)``:

    lambda * sum over modules of || B[:, tail] @ A[tail, :] ||_F

and after training compares the tail's size with what it was when the round began. If the
penalty won (the tail shrank while the rest trained), the device concludes its data do not
need those components and prunes them: from this round on its rank is ``floor(keep * r_k)``
(never below ``min_rank``). A pruned device's update carries zeros in the pruned components,
which zero-padding aggregation reads exactly as a lower-rank device's update, and the
coordinator hands it a lower-rank tier from then on (``coordinator/scheduling/hetlora.py``).

Choices where the paper leaves room, and why:

- **The penalty as a separate step.** On-device runtimes compute the gradient of the loss the
  program was exported with; the penalty is not in it. So after each optimizer step the device
  takes one plain gradient step of the penalty on the tail factors (step size ``lr * lambda``):
  operator splitting of loss + penalty, exact to first order for SGD and the "decoupled" form
  AdamW uses for weight decay. It needs no new artifact and works with any runtime that can
  read and write its adapter.
- **One decision per device**, over all modules (the sum of the tails' squared norms), because
  the paper prunes a device's rank, not a module's; a module of another rank (a per-layer rank
  pattern) keeps its own ``floor(keep * r)``.
- **The device's rank is its program's**: the coordinator gives a pruned device a lower-rank
  tier, so a device keeps no state of its own between rounds.

The settings travel in a task's ``train.rank_self_pruning`` (:meth:`RankSelfPruning.to_dict`);
:meth:`RankSelfPruning.from_train` checks them, as a device must check anything it is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:     # torch is imported where a device needs it: the coordinator reads ranks from numpy
    import torch

A_SUFFIX, B_SUFFIX = "lora_A.weight", "lora_B.weight"

#: Bounds a device accepts (a task outside them is malformed, not a request to obey).
MAX_STRENGTH = 1e3


def lora_modules(tensors: Mapping[str, object]) -> dict[str, tuple[str, str]]:
    """Module prefix -> (A key, B key) for every LoRA module with both factors in ``tensors``."""
    modules = {}
    for key in tensors:
        if key.endswith(A_SUFFIX):
            prefix = key[: -len(A_SUFFIX)]
            if prefix + B_SUFFIX in tensors:
                modules[prefix] = (key, prefix + B_SUFFIX)
    return dict(sorted(modules.items()))


def effective_rank(tensors: Mapping[str, np.ndarray | torch.Tensor]) -> int:
    """The highest rank any module of an adapter uses: 1 + the last component whose row of A
    or column of B has a non-zero (0 for an adapter that is zero everywhere).

    The coordinator reads a device's rank from what it sent, not from what it says.
    """
    rank = 0
    for a_key, b_key in lora_modules(tensors).values():
        a, b = np.asarray(tensors[a_key]), np.asarray(tensors[b_key])
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"{a_key}/{b_key}: shapes {a.shape} and {b.shape} are not LoRA factors of one rank")
        used = np.flatnonzero(np.any(a != 0, axis=1) | np.any(b != 0, axis=0))
        if used.size:
            rank = max(rank, int(used[-1]) + 1)
    return rank


@dataclass(frozen=True)
class RankSelfPruning:
    """HetLoRA's local rank self-pruning: penalty ``strength`` (lambda) on the tail beyond
    ``floor(keep * r)``, which is pruned when it shrank over the round; never below ``min_rank``."""

    strength: float
    keep: float
    min_rank: int = 1

    def __post_init__(self):
        for name, value, low, high in (("strength", self.strength, 0.0, MAX_STRENGTH), ("keep", self.keep, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low < value <= high or (name == "keep" and value == 1.0):
                bound = f"(0, {high:g}]" if name == "strength" else "(0, 1)"
                raise ValueError(f"rank self-pruning {name} must be a number in {bound}, got {value!r}")
        if isinstance(self.min_rank, bool) or not isinstance(self.min_rank, int) or self.min_rank < 1:
            raise ValueError(f"rank self-pruning min_rank must be a whole number >= 1, got {self.min_rank!r}")

    @classmethod
    def from_train(cls, train: Mapping) -> "RankSelfPruning | None":
        """The settings of a task's ``train`` object (None when it asks for none; ``ValueError``
        naming the problem for a malformed one)."""
        settings = train.get("rank_self_pruning")
        if settings is None:
            return None
        if not isinstance(settings, Mapping) or set(settings) - {"strength", "keep", "min_rank"} \
                or not {"strength", "keep"} <= set(settings):
            raise ValueError("rank_self_pruning must be an object with strength, keep and optionally min_rank, "
                             f"got {settings!r}"[:200])
        return cls(**settings)

    def to_dict(self) -> dict:
        return {"strength": self.strength, "keep": self.keep, "min_rank": self.min_rank}

    def kept_rank(self, rank: int) -> int:
        """The rank a module of rank ``rank`` keeps when the device prunes (``rank`` itself when
        it is already at ``min_rank`` or below)."""
        return rank if rank <= self.min_rank else max(self.min_rank, math.floor(self.keep * rank))

    def _tails(self, tensors: Mapping[str, torch.Tensor]):
        for a_key, b_key in lora_modules(tensors).values():
            rank = tensors[a_key].shape[0]
            start = self.kept_rank(rank)
            if start < rank:
                yield a_key, b_key, start

    def tail_norm(self, tensors: Mapping[str, torch.Tensor]) -> float:
        """sqrt of the sum over modules of ``||B[:, tail] @ A[tail, :]||_F^2``: the penalised part."""
        import torch

        total = 0.0
        for a_key, b_key, start in self._tails(tensors):
            a, b = torch.as_tensor(tensors[a_key]).double(), torch.as_tensor(tensors[b_key]).double()
            total += float(torch.linalg.matrix_norm(b[:, start:] @ a[start:, :]) ** 2)
        return math.sqrt(total)

    def penalty_step(self, tensors: Mapping[str, torch.Tensor], lr: float) -> dict[str, torch.Tensor]:
        """The tail factors after one gradient step of ``strength * ||B_t A_t||_F`` per module, at
        rate ``lr`` (only the tensors that change; the gradient of a zero product is taken as 0).

        With ``P = B_t A_t``: d/dA_t = B_t^T P / ||P||, d/dB_t = P A_t^T / ||P||. The norm is not
        smooth at zero, so a step never moves a factor by more than its own norm: a large
        ``lr * strength`` shrinks the tail to zero instead of flipping it past zero.
        """
        import torch

        changed = {}
        step = lr * self.strength
        for a_key, b_key, start in self._tails(tensors):
            a, b = tensors[a_key].detach().clone(), tensors[b_key].detach().clone()
            a_tail, b_tail = a[start:, :], b[:, start:]
            product = b_tail @ a_tail
            norm = torch.linalg.matrix_norm(product)
            if float(norm) == 0.0:
                continue
            grad_a, grad_b = b_tail.T @ product / norm, product @ a_tail.T / norm
            a[start:, :] -= _bounded(step, a_tail, grad_a) * grad_a
            b[:, start:] -= _bounded(step, b_tail, grad_b) * grad_b
            changed[a_key], changed[b_key] = a, b
        return changed

    def decide(self, start: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor]) -> bool:
        """Whether the device prunes: its trained tail is smaller than the tail it started from."""
        return any(True for _ in self._tails(trained)) and self.tail_norm(trained) < self.tail_norm(start)

    def pruned(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` with every module's tail set to zero (what a pruned device uploads)."""
        out = dict(tensors)
        for a_key, b_key, start in self._tails(tensors):
            a, b = tensors[a_key].clone(), tensors[b_key].clone()
            a[start:, :] = 0.0
            b[:, start:] = 0.0
            out[a_key], out[b_key] = a, b
        return out


def _bounded(step: float, factor, gradient) -> float:
    """``step``, cut so that ``step * ||gradient||`` is at most ``||factor||``."""
    import torch

    size = float(torch.linalg.matrix_norm(gradient))
    return min(step, float(torch.linalg.matrix_norm(factor)) / size) if size > 0 else 0.0
