"""A split job's server: its workers, lock-step steps, the top, and the bottom adapters' averaging.

One :class:`SplitSession` owns everything a running split job holds in memory: the top of the
model (:class:`coordinator.split.top.SplitTop`, trained on every step), the workers that joined,
what the server measured about each (step times, label counts), the step in progress
(:class:`coordinator.split.step.SplitStep`) and the averaging of the workers' bottom adapters.
The top's weights change on every step, so a split job lives in exactly one process: the one
that created it (the HTTP layer, ``coordinator/api/split.py``, finds it there).

**A worker's loop** is one question, :meth:`SplitSession.next_action`, answered with what to do:

- ``features``: send step ``n``'s features for a batch of ``batch_size`` examples;
- ``gradient``: fetch step ``n``'s gradient slice (the step ran), backpropagate it, ask again;
- ``upload_adapter``: every ``average_every`` steps, send the bottom adapter for averaging
  ``k``; ``download_adapter``: load averaging ``k``'s result;
- ``wait`` (others are slower; ask again shortly) or ``done``.

**Plans.** Each step is planned when it opens, over the workers present then. ``mergesfl``
plans with :func:`coordinator.split.batch_regulation.regulate` (batch sizes from measured
speed, jointly with the merged batch's label mix) and runs the top once on the merged batch;
``plain`` is split learning without merging or regulation: every worker at the same batch size,
and the top steps on each worker's features in turn (SplitFed's sequential server).

**Measured, never claimed.** A worker's step time is measured by the server's clock: from the
later of the step's opening and the worker's fetch of its previous gradient, to the arrival of
its features (its backward, its forward and the upload). Speed and latency are fitted to the
last few (size, seconds) pairs (a worker that missed a deadline gets the time it had as a
sample: it was at least that slow); until a worker has any, MergeSFL plans it at the smallest
compiled size beside the regulated others. A worker that missed ``MAX_MISSED_STEPS`` planned
steps in a row is left out of plans and averagings until it asks again. The clock is injectable: wall time in a deployment, the conductor's virtual time in the
simulator (``POST .../clock``, admin only), never a device's word.

**Late and missing workers.** A step runs when every planned worker has sent or its deadline
has passed with at least one (the deadline: ``deadline_factor`` times the step time the plan
expects from the measured speeds, at most ``step_deadline_s``); a worker that missed it is dropped from the merged batch, and an
averaging closes at its deadline with whoever sent. A step that nobody sent is abandoned and
the next one planned.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from coordinator.split.batch_regulation import Plan, WorkerState, plan_of, regulate
from coordinator.split.step import SplitStep, StepError, StepOutcome

MODES = ("mergesfl", "plain")
#: The shortest deadline a measured plan gets (a near-zero measurement must not close steps at once).
MIN_STEP_DEADLINE_S = 1.0
#: Planned steps a worker may miss in a row before it is left out of plans (until it asks again).
MAX_MISSED_STEPS = 2
#: Workers one split job takes: every step's plan and merged batch grow with them.
MAX_WORKERS = 256
#: Largest absolute value a bottom adapter's element may have (LoRA values are small; a larger
#: one is a broken or hostile device, and one such adapter would poison every device's average).
MAX_ADAPTER_ABS = 1e3
#: Labels a worker's histogram keeps (the rest pooled under OTHER_LABELS); see _bounded.
MAX_LABELS = 64
OTHER_LABELS = "other"
#: Measurements kept per worker for its speed fit.
SPEED_WINDOW = 8


@dataclass
class WorkerRecord:
    """What the server knows of one worker, all of it observed by the server."""

    samples: deque = field(default_factory=lambda: deque(maxlen=SPEED_WINDOW))   # (size, seconds)
    label_counts: dict[str, float] = field(default_factory=dict)
    ready_since: float | None = None          # when it fetched its last gradient (or joined)
    examples_since_sync: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    steps: int = 0
    adapter_synced: int = 0                   # the last averaging it downloaded
    missed_in_a_row: int = 0                  # planned steps it did not send in time

    def state(self, fallback_speed: float) -> WorkerState:
        """Speed (examples/s) and latency (s) fitted to the samples: least squares on
        seconds = size / speed + latency when sizes differ, else all of it speed."""
        if not self.samples:
            return WorkerState(speed=fallback_speed, latency=0.0, labels=self.label_counts or {"?": 1.0})
        sizes = [s for s, _ in self.samples]
        seconds = [max(t, 1e-6) for _, t in self.samples]
        if len(set(sizes)) > 1:
            mean_s, mean_t = sum(sizes) / len(sizes), sum(seconds) / len(seconds)
            slope = sum((s - mean_s) * (t - mean_t) for s, t in zip(sizes, seconds)) \
                / sum((s - mean_s) ** 2 for s in sizes)
            latency = mean_t - slope * mean_s
            if slope > 0 and latency >= 0:
                return WorkerState(speed=1.0 / slope, latency=latency, labels=self.label_counts or {"?": 1.0})
        return WorkerState(speed=sum(sizes) / sum(seconds), latency=0.0, labels=self.label_counts or {"?": 1.0})


@dataclass
class Averaging:
    """One averaging (number ``k``) of the bottom adapters of the workers ``expected`` to send."""

    number: int
    expected: set[str]
    deadline: float
    received: dict[str, tuple[dict[str, torch.Tensor], int]] = field(default_factory=dict)
    result: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class StepRecord:
    """A closed step, for reports and the dashboard."""

    number: int
    planned: dict[str, int]
    merged: list[str]
    dropped: list[str]
    loss: float
    opened_at: float
    closed_at: float
    idle_seconds: float
    label_mix: dict[str, float]
    divergence: float
    bytes_up: int = 0          # the merged workers' features and labels, as received
    bytes_down: int = 0        # their gradient slices (float32)


def _finite(value: float) -> float | None:
    """``value``, or None where JSON has no number for it (NaN: a skipped top step; inf)."""
    return value if math.isfinite(value) else None


def _bounded(counts: dict[str, float]) -> dict[str, float]:
    """At most :data:`MAX_LABELS` labels: the most frequent, the rest pooled as ``"other"``.
    A classification task has a handful of labels; a language-modelling task's labels are the
    vocabulary, and regulation's divergence over tens of thousands of classes per trial plan
    would cost more than the step it plans."""
    if len(counts) <= MAX_LABELS:
        return counts
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ranked[:MAX_LABELS - 1])
    kept[OTHER_LABELS] = kept.get(OTHER_LABELS, 0.0) + sum(v for _, v in ranked[MAX_LABELS - 1:])
    return kept


class SplitSession:
    """The server of one split job (see the module docstring)."""

    def __init__(self, top, *, start_adapter: Mapping[str, torch.Tensor], seq: int, hidden: int, vocab_size: int,
                 compiled_sizes: Sequence[int], target_batch: int, steps: int, average_every: int,
                 step_deadline_s: float, mode: str = "mergesfl", slack: float = 0.2, deadline_factor: float = 3.0,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in MODES:
            raise ValueError(f"unknown split mode {mode!r}; use one of {', '.join(MODES)}")
        if steps < 1 or average_every < 1 or target_batch < 1 or step_deadline_s <= 0:
            raise ValueError("steps, average_every and target_batch must be >= 1, step_deadline_s > 0")
        self.top, self.mode, self.slack = top, mode, slack
        self.start_adapter = {key: value.clone() for key, value in start_adapter.items()}
        self.adapter_keys = {key: tuple(value.shape) for key, value in start_adapter.items()}
        self.seq, self.hidden, self.vocab_size = seq, hidden, vocab_size
        self.compiled_sizes = sorted({int(s) for s in compiled_sizes})
        self.target_batch, self.steps, self.average_every = target_batch, steps, average_every
        self.step_deadline_s = step_deadline_s
        self.deadline_factor = deadline_factor
        self.clock = clock
        self.lock = threading.RLock()
        self.workers: dict[str, WorkerRecord] = {}
        self.step: SplitStep | None = None
        self.plan: Plan | None = None
        self.opened_at = 0.0
        self.averaging: Averaging | None = None
        self.averagings_opened = 0          # averagings owed so far (opened, skipped or done)
        self.averagings_done = 0            # the number of the newest finished averaging
        self.step_numbers = 0
        self.previous_step: SplitStep | None = None
        self._step_bytes_up: dict[str, int] = {}
        self.latest_adapter: dict[str, torch.Tensor] | None = None
        self.history: list[StepRecord] = []
        self.steps_run = 0

    # --- membership ---------------------------------------------------------------------------

    def join(self, worker: str) -> None:
        """Add ``worker``; it is planned from the next step that opens."""
        with self.lock:
            if worker not in self.workers:
                if len(self.workers) >= MAX_WORKERS:
                    raise StepError(409, "job_full", f"this split job already has {MAX_WORKERS} devices")
                self.workers[worker] = WorkerRecord(ready_since=self.clock())   # loads the newest average first

    def require_joined(self, worker: str) -> None:
        """:class:`StepError` 403 ``not_joined`` unless ``worker`` joined (checked before a body is read)."""
        with self.lock:
            self._record(worker)

    @property
    def done(self) -> bool:
        """Every step ran and every averaging owed is finished (or skipped)."""
        return self.steps_run >= self.steps and self.averaging is None and not self._averaging_due()

    # --- the worker's question ------------------------------------------------------------------

    def next_action(self, worker: str) -> dict:
        """What ``worker`` should do now (see the module docstring)."""
        with self.lock:
            record = self._record(worker)
            record.missed_in_a_row = min(record.missed_in_a_row, MAX_MISSED_STEPS - 1)   # it is back
            self._advance()
            # A pending gradient first: it was computed for the weights the device holds now.
            for step in (self.previous_step, self.step):
                if step is not None and step.outcome is not None and worker in step.outcome.merged \
                        and worker not in step.fetched:
                    return {"kind": "gradient", "step": step.number}
            if self.latest_adapter is not None and record.adapter_synced < self.averagings_done \
                    and (self.averaging is None or worker not in self.averaging.expected):
                return {"kind": "download_adapter", "averaging": self.averagings_done}
            step = self.step
            if self.averaging is not None:
                if worker in self.averaging.expected and worker not in self.averaging.received:
                    return {"kind": "upload_adapter", "averaging": self.averaging.number}
                return {"kind": "wait"}
            if self.done:
                return {"kind": "done"}
            if step is not None and step.outcome is None and worker in step.batch_sizes \
                    and not step.submitted(worker) and not step.past_deadline():
                return {"kind": "features", "step": step.number, "batch_size": step.batch_sizes[worker],
                        "deadline_in_s": max(0.0, step.deadline - self.clock())}
            return {"kind": "wait"}

    # --- features and gradients ----------------------------------------------------------------

    def planned_size(self, worker: str, step_number: int) -> int:
        """The batch size ``worker`` may send for step ``step_number`` now, or :class:`StepError`
        saying why it may not (the HTTP layer sizes its body limit with it)."""
        with self.lock:
            self._record(worker)
            self._advance()
            step = self._step_numbered(step_number)
            if worker not in step.batch_sizes:
                raise StepError(403, "not_in_step", f"worker {worker!r} is not planned in step {step.number}")
            if step.outcome is not None or step.past_deadline():
                raise StepError(409, "step_closed", f"step {step.number} is closed; it accepts no more features")
            if step.submitted(worker):
                raise StepError(409, "already_submitted", f"worker {worker!r} already sent step {step.number}'s features")
            return step.batch_sizes[worker]

    def submit_features(self, worker: str, step_number: int, features: torch.Tensor, labels: torch.Tensor,
                        size_bytes: int) -> dict:
        """Accept ``worker``'s features for step ``step_number`` (or raise :class:`StepError`);
        runs the step when it was the last one awaited."""
        with self.lock:
            record = self._record(worker)
            self._advance()
            step = self._step_numbered(step_number)
            step.submit(worker, features, labels)
            now = self.clock()
            began = max(self.opened_at, record.ready_since if record.ready_since is not None else self.opened_at)
            record.samples.append((step.batch_sizes[worker], max(now - began, 1e-6)))
            values, counts = torch.unique(labels[:, 1:][labels[:, 1:] >= 0], return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist()):
                record.label_counts[str(value)] = record.label_counts.get(str(value), 0.0) + count
            record.label_counts = _bounded(record.label_counts)
            record.bytes_up += size_bytes
            record.missed_in_a_row = 0
            self._step_bytes_up[worker] = size_bytes
            if step.ready() and not step.past_deadline():
                self._run_step()
            return {"step": step.number, "accepted": True}

    def gradient(self, worker: str, step_number: int) -> torch.Tensor:
        """``worker``'s gradient slice of step ``step_number`` (409 ``step_not_ready`` while the step waits)."""
        with self.lock:
            record = self._record(worker)
            self._advance()
            step = self._step_numbered(step_number, closed_ok=True)
            if step.outcome is None:
                raise StepError(409, "step_not_ready", f"step {step.number} is waiting for other workers' features")
            gradient = step.gradient_for(worker)
            if worker not in step.fetched:
                record.steps += 1
                record.examples_since_sync += step.batch_sizes[worker]
                record.bytes_down += gradient.numel() * gradient.element_size()
                record.ready_since = self.clock()
                step.fetched.add(worker)
            self._advance()
            return gradient

    # --- bottom adapters --------------------------------------------------------------------------

    def submit_adapter(self, worker: str, averaging: int, tensors: Mapping[str, torch.Tensor], size_bytes: int) -> dict:
        """``worker``'s bottom adapter for averaging ``averaging``: exactly the job's keys and
        shapes, finite float32. Closes the averaging when it was the last one awaited."""
        with self.lock:
            record = self._record(worker)
            self._advance()
            current = self.averaging
            if current is None or current.number != averaging:
                raise StepError(409, "no_such_averaging", f"averaging {averaging} is not open")
            if worker not in current.expected:
                raise StepError(403, "not_in_averaging", f"worker {worker!r} trained nothing since the last averaging")
            if worker in current.received:
                raise StepError(409, "already_submitted", f"worker {worker!r} already sent averaging {averaging}")
            if set(tensors) != set(self.adapter_keys):
                missing, extra = sorted(set(self.adapter_keys) - set(tensors)), sorted(set(tensors) - set(self.adapter_keys))
                raise StepError(422, "bad_adapter", f"the bottom adapter's keys differ from the job's: missing "
                                                    f"{missing[:3]}, unexpected {extra[:3]}")
            for key, tensor in tensors.items():
                if tensor.dtype != torch.float32 or tuple(tensor.shape) != self.adapter_keys[key]:
                    raise StepError(422, "bad_adapter", f"{key}: expected float32 {list(self.adapter_keys[key])}, "
                                                        f"got {str(tensor.dtype).replace('torch.', '')} {list(tensor.shape)}")
                if not bool(torch.isfinite(tensor).all()):
                    raise StepError(422, "bad_adapter", f"{key} holds NaN or infinite values")
                if float(tensor.abs().max()) > MAX_ADAPTER_ABS:
                    raise StepError(422, "bad_adapter", f"{key} has values beyond +-{MAX_ADAPTER_ABS:g}: not a LoRA adapter")
            current.received[worker] = ({k: v.clone() for k, v in tensors.items()}, record.examples_since_sync)
            record.bytes_up += size_bytes
            if set(current.received) == current.expected:
                self._close_averaging()
            return {"averaging": averaging, "accepted": True}

    def averaged_adapter(self, worker: str, averaging: int) -> dict[str, torch.Tensor]:
        """Averaging ``averaging``'s result (only the newest is kept)."""
        with self.lock:
            record = self._record(worker)
            self._advance()
            if averaging != self.averagings_done or self.latest_adapter is None:
                raise StepError(409, "no_such_averaging", f"averaging {averaging} is not the newest finished one "
                                                          f"({self.averagings_done})")
            if record.adapter_synced < averaging:
                record.adapter_synced = averaging
                record.bytes_down += sum(t.numel() * t.element_size() for t in self.latest_adapter.values())
                record.ready_since = self.clock()
            return self.latest_adapter

    def full_adapter(self) -> dict[str, torch.Tensor]:
        """The job's model as one PEFT adapter: the newest average of the bottoms (the start
        adapter before the first) and the top's current LoRA weights."""
        with self.lock:
            bottom = self.latest_adapter if self.latest_adapter is not None else self.start_adapter
            return {**{k: v.clone() for k, v in bottom.items()}, **self.top.adapter_tensors()}

    # --- reports -------------------------------------------------------------------------------------

    def summary(self) -> dict:
        """Progress, the last step's plan and label mix, and per-worker measurements and bytes."""
        with self.lock:
            self._advance()
            last = self.history[-1] if self.history else None
            return {
                "mode": self.mode, "steps": self.steps, "steps_run": self.steps_run, "done": self.done,
                "averagings": self.averagings_done, "workers": len(self.workers),
                "idle_seconds": sum(r.idle_seconds for r in self.history),
                "last_step": None if last is None else {
                    "number": last.number, "planned": last.planned, "merged": last.merged, "dropped": last.dropped,
                    "loss": _finite(last.loss), "label_mix": last.label_mix, "divergence": _finite(last.divergence),
                    "idle_seconds": last.idle_seconds, "bytes_up": last.bytes_up, "bytes_down": last.bytes_down},
                "per_worker": {name: {"steps": r.steps, "bytes_up": r.bytes_up, "bytes_down": r.bytes_down,
                                      "speed": r.state(1.0).speed if r.samples else None}
                               for name, r in sorted(self.workers.items())},
            }

    # --- internals -----------------------------------------------------------------------------------

    def _record(self, worker: str) -> WorkerRecord:
        record = self.workers.get(worker)
        if record is None:
            raise StepError(403, "not_joined", f"worker {worker!r} has not joined this split job")
        return record

    def _step_numbered(self, number: int, closed_ok: bool = False) -> SplitStep:
        """The current step, or with ``closed_ok`` the previous one (gradients still fetchable)."""
        candidates = [self.step] + ([self.previous_step] if closed_ok else [])
        for step in candidates:
            if step is not None and step.number == number:
                return step
        current = f" (the current step is {self.step.number})" if self.step is not None else ""
        raise StepError(409, "no_such_step", f"step {number} is not open{current}")

    def _advance(self) -> None:
        """Move the job along by the clock: run a step whose deadline passed, abandon one nobody
        sent, close an averaging at its deadline, then open the next averaging or step."""
        step = self.step
        now = self.clock()
        if step is not None and step.outcome is None and step.past_deadline():
            if step.ready():
                self._run_step()
            else:
                self.step = None                      # nobody sent: abandon it, plan the next one
        if self.averaging is not None and now > self.averaging.deadline:
            if self.averaging.received:
                self._close_averaging()
            else:
                self.averaging = None                 # nobody sent: this averaging is skipped
        if self.averaging is not None or (self.step is not None and self.step.outcome is None):
            return
        if self._averaging_due():
            if self.step is not None and any(w not in self.step.fetched for w in self.step.outcome.merged) \
                    and not self.step.past_deadline():
                return                                # let the last step's gradients land first
            self._open_averaging()
        elif self.steps_run < self.steps and self.workers:
            self._open_step()

    def _averaging_due(self) -> bool:
        """An averaging is owed after every ``average_every`` steps run and after the last one."""
        owed = min(self.steps_run // self.average_every + (self.steps_run >= self.steps and
                                                            self.steps_run % self.average_every != 0),
                   self.steps_run)
        return self.steps_run > 0 and self.averagings_opened < owed

    def _open_step(self) -> None:
        self.step_numbers += 1
        self._step_bytes_up = {}
        self.plan = self._plan()
        self.opened_at = self.clock()
        if self.step is not None and self.step.outcome is not None:
            self.previous_step = self.step
        self.step = SplitStep(self.step_numbers, self.plan.batch_sizes, self.seq, self.hidden, self.vocab_size,
                              self._step_deadline(), clock=self.clock,
                              loss_positions=getattr(self.top, "loss_positions", None))

    def _step_deadline(self) -> float:
        """Seconds a step waits: ``deadline_factor`` times the plan's expected step time once every
        planned worker has been measured (a worker that vanished costs a few step times, not
        the job's whole deadline), never more than ``step_deadline_s``."""
        planned = [name for name, size in self.plan.batch_sizes.items() if size > 0]
        if self.deadline_factor <= 0 or not all(self.workers[name].samples for name in planned):
            return self.step_deadline_s
        return min(self.step_deadline_s, max(self.deadline_factor * self.plan.step_seconds, MIN_STEP_DEADLINE_S))

    def _active(self) -> dict[str, WorkerRecord]:
        """Workers to plan: those that have not missed ``MAX_MISSED_STEPS`` planned steps in a row
        (a worker that vanished stops holding every step to the deadline; asking again brings it back)."""
        return {name: r for name, r in self.workers.items() if r.missed_in_a_row < MAX_MISSED_STEPS}

    def _plan(self) -> Plan:
        """MergeSFL: batch-size regulation over the measured workers, and the smallest compiled
        size for each not measured yet (its first step measures it). Plain: every worker at the
        compiled size nearest an equal share of the target."""
        active = self._active()
        known = [r.state(1.0).speed for r in active.values() if r.samples]
        fallback = min(known) if known else 1.0
        states = {name: record.state(fallback) for name, record in active.items()}
        global_labels = {}
        for record in self.workers.values():
            for label, count in record.label_counts.items():
                global_labels[label] = global_labels.get(label, 0.0) + count
        global_labels = global_labels or {"?": 1.0}
        if self.mode == "mergesfl" and known:
            measured = {name: state for name, state in states.items() if active[name].samples}
            newcomers = {name: self.compiled_sizes[0] for name in states if name not in measured}
            target = max(1, self.target_batch - sum(newcomers.values()))
            try:
                plan = regulate(measured, global_labels, target, self.compiled_sizes, slack=self.slack)
                sizes = {**{w: s for w, s in plan.batch_sizes.items() if s > 0}, **newcomers}
                return plan_of(sizes, states, global_labels)
            except ValueError:
                pass
        share = self.target_batch / max(1, len(states))
        size = min(self.compiled_sizes, key=lambda s: (abs(s - share), s))
        return plan_of({name: size for name in states}, states, global_labels)

    def _run_step(self) -> None:
        step = self.step
        outcome: StepOutcome = step.run(self.top, merge=self.mode == "mergesfl")
        self.steps_run += 1
        now = self.clock()
        for name in outcome.dropped:              # it did not make the deadline: at least that slow
            record = self.workers[name]
            record.missed_in_a_row += 1
            began = max(self.opened_at, record.ready_since if record.ready_since is not None else self.opened_at)
            record.samples.append((step.batch_sizes[name], max(now - began, 1e-6)))
        mix_total = sum(outcome.label_counts.values()) or 1
        mix = {str(k): v / mix_total for k, v in outcome.label_counts.items()}
        self.history.append(StepRecord(
            number=step.number, planned=dict(step.batch_sizes), merged=outcome.merged, dropped=outcome.dropped,
            loss=outcome.loss, opened_at=self.opened_at, closed_at=self.clock(),
            idle_seconds=self.plan.idle_seconds if self.plan is not None else 0.0, label_mix=mix,
            divergence=self.plan.divergence if self.plan is not None else float("nan"),
            bytes_up=sum(self._step_bytes_up.get(w, 0) for w in outcome.merged),
            bytes_down=sum(step.batch_sizes[w] * self.seq * self.hidden * 4 for w in outcome.merged)))

    def _open_averaging(self) -> None:
        self.averagings_opened += 1
        # The last step's merged workers trained on it even if a gradient is still to be fetched.
        last = set(self.step.outcome.merged) if self.step is not None and self.step.outcome is not None else set()
        expected = {name for name, r in self._active().items() if r.examples_since_sync > 0} | last
        if not expected:
            return
        self.averaging = Averaging(number=self.averagings_opened, expected=expected,
                                   deadline=self.clock() + self.step_deadline_s)

    def _close_averaging(self) -> None:
        current = self.averaging
        total = sum(examples for _, examples in current.received.values())
        weights = {w: (examples / total if total else 1.0 / len(current.received))
                   for w, (_, examples) in current.received.items()}
        averaged = {key: sum(tensors[key].double() * weights[w] for w, (tensors, _) in current.received.items())
                    for key in self.adapter_keys}
        self.latest_adapter = {key: value.float().contiguous() for key, value in averaged.items()}
        self.averagings_done = current.number
        for name in current.expected:             # whoever missed it starts over from the average
            self.workers[name].examples_since_sync = 0
        self.averaging = None
