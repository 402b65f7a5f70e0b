"""One lock-step split-learning step on the server: features in, one merged top step, gradient slices out.

A step is planned for a set of workers with a batch size each (``batch_regulation``). Each worker
submits the cut-layer features of its batch and the batch's labels; once every planned worker
has submitted, or the step's deadline has passed with at least one, the server merges what
arrived into one batch (workers in a fixed order, so a step's result does not depend on arrival
order), runs the top forward and backward once (``top.SplitTop``) and keeps each worker's slice
of the features' gradient for it to fetch. A worker that missed the deadline is dropped from the
merged batch, never waited on; what it sends afterwards is refused.

Nothing a worker sends is trusted: features must have exactly the planned shape
``[batch_size, seq, hidden]`` and be finite, labels must be ``[batch_size, seq]`` integers that
are -100 or valid token ids with at least one labelled position, a worker may submit once and
only to a step it is planned in, and may fetch only its own slice. A refused submission changes
nothing (the step's state is checked before anything is stored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from models.batching import IGNORE_INDEX, check_loss_positions


class StepError(Exception):
    """A refused request: ``code`` (the API's error code) and ``status`` (its HTTP status)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class StepOutcome:
    """What a closed step did: who was merged, the merged batch, the loss, the dropped workers."""

    merged: list[str]
    dropped: list[str]
    merged_batch: int
    loss: float
    seconds: float
    label_counts: dict[int, int] = field(default_factory=dict)


class SplitStep:
    """Step ``number`` of a split job, planned as ``batch_sizes`` (worker -> examples)."""

    def __init__(self, number: int, batch_sizes: Mapping[str, int], seq: int, hidden: int, vocab_size: int,
                 deadline_s: float, clock: Callable[[], float] = time.monotonic, loss_positions: int | None = None):
        if not batch_sizes or any(size < 1 for size in batch_sizes.values()):
            raise ValueError("a step needs at least one worker, each with a batch of at least 1")
        self.number, self.seq, self.hidden, self.vocab_size = number, seq, hidden, vocab_size
        self.batch_sizes = dict(batch_sizes)
        self.loss_positions = loss_positions
        self._clock = clock
        self.deadline = clock() + deadline_s
        self._features: dict[str, torch.Tensor] = {}
        self._labels: dict[str, torch.Tensor] = {}
        self._gradients: dict[str, torch.Tensor] = {}
        self.fetched: set[str] = set()          # workers that took their gradient slice (the session's record)
        self.outcome: StepOutcome | None = None

    # --- what workers send ----------------------------------------------------------------------

    def submit(self, worker: str, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Accept ``worker``'s features and labels for this step, or raise :class:`StepError`."""
        if worker not in self.batch_sizes:
            raise StepError(403, "not_in_step", f"worker {worker!r} is not planned in step {self.number}")
        if self.outcome is not None or self.past_deadline():
            raise StepError(409, "step_closed", f"step {self.number} is closed; it accepts no more features")
        if worker in self._features:
            raise StepError(409, "already_submitted", f"worker {worker!r} already sent step {self.number}'s features")
        size = self.batch_sizes[worker]
        if not isinstance(features, torch.Tensor) or features.dtype != torch.float32 \
                or tuple(features.shape) != (size, self.seq, self.hidden):
            raise StepError(422, "bad_features", f"step {self.number} expects float32 features of shape "
                                                 f"[{size}, {self.seq}, {self.hidden}] from {worker!r}, got "
                                                 f"{_described(features)}")
        if not bool(torch.isfinite(features).all()):
            raise StepError(422, "bad_features", "the features hold NaN or infinite values")
        if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32) \
                or tuple(labels.shape) != (size, self.seq):
            raise StepError(422, "bad_labels", f"step {self.number} expects integer labels of shape "
                                               f"[{size}, {self.seq}] from {worker!r}, got {_described(labels)}")
        labelled = labels != IGNORE_INDEX
        if bool(((labels < 0) & labelled).any()) or bool((labels >= self.vocab_size).any()):
            raise StepError(422, "bad_labels", f"labels must be {IGNORE_INDEX} or token ids in [0, {self.vocab_size})")
        if not bool(labelled[:, 1:].any()):
            raise StepError(422, "bad_labels", "the batch has no labelled position to learn from")
        try:
            check_loss_positions(labels, self.loss_positions)
        except ValueError as error:
            raise StepError(422, "bad_labels", str(error)) from None
        self._features[worker] = features
        self._labels[worker] = labels.to(torch.int64)

    def submitted(self, worker: str) -> bool:
        return worker in self._features or worker in self._gradients

    def past_deadline(self) -> bool:
        return self._clock() > self.deadline

    def ready(self) -> bool:
        """Whether the step can run now: every planned worker has sent, or the deadline passed
        with at least one."""
        if self.outcome is not None:
            return False
        return len(self._features) == len(self.batch_sizes) or (self.past_deadline() and bool(self._features))

    # --- the server's step ------------------------------------------------------------------------

    def run(self, top, merge: bool = True) -> StepOutcome:
        """Merge what arrived (workers in name order), run the top once (``top.step``: features,
        labels -> loss, features' gradient) and keep each worker's gradient slice.

        ``merge=False`` is split learning without feature merging: the top steps on each worker's
        features in turn (the same order), and the loss reported is their example-weighted mean."""
        if not self.ready():
            raise StepError(409, "step_not_ready", f"step {self.number} is waiting for features")
        started = time.perf_counter()
        merged = sorted(self._features)
        features = torch.cat([self._features[w] for w in merged])
        labels = torch.cat([self._labels[w] for w in merged])
        if merge:
            loss, gradient = top.step(features, labels)
        else:
            losses, slices = [], []
            for worker in merged:
                worker_loss, worker_gradient = top.step(self._features[worker], self._labels[worker])
                losses.append(worker_loss * self.batch_sizes[worker])
                slices.append(worker_gradient)
            loss, gradient = sum(losses) / features.size(0), torch.cat(slices)
        offset = 0
        for worker in merged:
            size = self.batch_sizes[worker]
            self._gradients[worker] = gradient[offset:offset + size].clone()
            offset += size
        counted = labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]
        values, counts = torch.unique(counted, return_counts=True)
        self.outcome = StepOutcome(merged=merged, dropped=sorted(set(self.batch_sizes) - set(merged)),
                                   merged_batch=int(features.size(0)), loss=loss,
                                   seconds=time.perf_counter() - started,
                                   label_counts={int(v): int(c) for v, c in zip(values, counts)})
        self._features.clear()      # the merged batch is done with: keep only the slices
        self._labels.clear()
        return self.outcome

    def gradient_for(self, worker: str) -> torch.Tensor:
        """``worker``'s slice of the features' gradient, once the step ran (only its own)."""
        if worker not in self.batch_sizes:
            raise StepError(403, "not_in_step", f"worker {worker!r} is not planned in step {self.number}")
        if self.outcome is None:
            raise StepError(409, "step_not_ready", f"step {self.number} has not run yet")
        if worker not in self._gradients:
            raise StepError(409, "dropped", f"worker {worker!r} missed step {self.number}'s deadline")
        return self._gradients[worker]


def _described(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    return type(value).__name__
