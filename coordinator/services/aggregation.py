"""How a frozen round is aggregated: its fixed set of updates in, one new global adapter out.

:class:`RoundAggregator` reads a frozen (``aggregating``) round's accepted updates, runs the
job's strategy and writes the new global adapter's blobs *without* holding any lock (it can
take a while, and the inputs can no longer change); then
:func:`~coordinator.services.lifecycle.record_aggregate` records it, closes the round and
opens the next one (or completes the job) in one short locked transaction. When and why a
round freezes, and what closing it means for its job, is decided in ``services/lifecycle.py``.

Before the strategy sees them, updates are brought to the job's layout: a change longer than
the round's norm bound is scaled down (``services/norm_clipping.py``), and an update trained
on another tier is lifted into the reference shapes (``services/adapter_mapping.py``).

A round that reaches its deadline with fewer than ``min_updates`` results is aggregated
with what it has; with none, the global adapter carries over unchanged (``num_updates`` 0).
A crash anywhere leaves either an ``open`` round (nothing happened), or an ``aggregating``
one that the deadline watcher closes after restart: blobs are content-addressed, so redoing
the aggregation writes the same files.

**Failures stay inside their round.** If computing the aggregate raises (a strategy's error,
an update blob that cannot be read), retrying cannot help: the round and its job are marked
``failed`` with the reason, once (:func:`~coordinator.services.lifecycle.fail_round`), and
nothing is retried. If only recording fails (the database is briefly unreachable), the round
stays ``aggregating`` and the next sweep tries again. Either way :meth:`RoundAggregator.sweep`
goes on with the next round, so one job's trouble never holds up another job's rounds.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLTimeoutError

from coordinator.models import GlobalAdapter, Job, Round, RoundStatus, Task, Update
from coordinator.services import lifecycle
from coordinator.services.adapter_mapping import lift
from coordinator.services.artifacts import compiled_tier
from coordinator.services.norm_clipping import clip_scales, scaled
from coordinator.privacy.central_noise import clipped_delta, private_mean
from coordinator.privacy.settings import PrivacySettings
from coordinator.services.state import ServiceState
from coordinator.strategies import ClientUpdate, get_strategy

log = logging.getLogger(__name__)


class RoundAggregator:
    """Aggregates each frozen round once and hands the result to the life cycle to record."""

    def __init__(self, state: ServiceState):
        self.state = state
        # One aggregation at a time per process: a request that froze a round and the watcher
        # that found it frozen queue here, and the second finds it closed (so the request's
        # answer reliably says "closed"). Across processes, the round's row lock decides.
        self._lock = threading.Lock()

    def sweep(self) -> int:
        """Freeze rounds past their deadline and close every frozen round; returns rounds closed.

        Each round is handled on its own: an error in one is logged and the sweep goes on.
        """
        db = self.state.db
        lifecycle.freeze_overdue_rounds(self.state)
        with db.read() as session:
            frozen = session.scalars(select(Round.id).where(Round.status == RoundStatus.AGGREGATING)
                                     .order_by(Round.id)).all()
        closed = 0
        for round_id in frozen:
            try:
                closed += self.close(round_id)
            except Exception as exc:  # noqa: BLE001 - recording failed; the round stays aggregating
                log.warning("round %s: could not record its aggregation (%s: %s); retrying next tick",
                            round_id, type(exc).__name__, exc)
        return closed

    def close(self, round_id: int) -> bool:
        """Aggregate frozen round ``round_id`` and open the next one; False if nothing to do.

        A failed aggregation marks the round and its job failed (and returns False); only an
        error while recording the result propagates (the round stays ``aggregating``).
        """
        with self._lock:
            return self._close(round_id)

    def _close(self, round_id: int) -> bool:
        state, db = self.state, self.state.db
        with db.read() as session:
            round_ = session.get(Round, round_id)
            if round_ is None or round_.status != RoundStatus.AGGREGATING:
                return False
            job = session.get(Job, round_.job_id)
            start = session.scalars(select(GlobalAdapter).where(
                GlobalAdapter.job_id == job.id, GlobalAdapter.round == round_.number - 1)).one()
            updates = session.scalars(select(Update).where(Update.round_id == round_id).order_by(Update.id)).all()
            task_starts = {task_id: (artifact_id, start_sha) for task_id, artifact_id, start_sha in session.execute(
                select(Task.id, Task.artifact_id, Task.start_weights_sha256).where(Task.round_id == round_id)).all()}
        privacy = PrivacySettings.from_dict(job.privacy)
        if privacy is not None:
            return self._close_private(job, round_, start, updates, task_starts, privacy)
        try:
            strategy = get_strategy(job.strategy)
            current = state.adapters.tensors(start.weights_sha256)
            sizes = [_trained_values(state, task_starts.get(u.task_id, (None, None))[0] or job.artifact_id)
                     for u in updates]
            scales = clip_scales([u.delta_norm for u in updates], sizes, job.norm_clip_factor)
            client_updates = [_client_update(state, job, current, start.weights_sha256, u, scale,
                                             *task_starts.get(u.task_id, (None, None)))
                              for u, scale in zip(updates, scales)]
            previous = None
            if strategy.uses_previous_adapter:   # only such strategies pay for the lookup
                with db.read() as session:
                    before_start = session.scalar(select(GlobalAdapter.weights_sha256).where(
                        GlobalAdapter.job_id == job.id, GlobalAdapter.round == round_.number - 2))
                if before_start is not None:
                    previous = state.adapters.tensors(before_start)
            aggregated = strategy.aggregate_train(current, client_updates, previous=previous)
            weights_ref, ptd_ref = state.adapters.store(aggregated)
        except Exception as exc:  # noqa: BLE001 - recorded as the round's failure, never retried
            log.exception("job %s round %s: aggregation failed; the round and the job are marked failed",
                          job.id, round_.number)
            lifecycle.fail_round(self.state, round_id, f"{type(exc).__name__}: {exc}")
            return False
        num_clipped = sum(scale < 1.0 for scale in scales)
        try:
            return lifecycle.record_aggregate(
                state, round_id, config_sha256=start.config_sha256, weights=weights_ref, ptd=ptd_ref,
                num_updates=len(updates), num_examples=sum(u.num_examples for u in updates),
                num_clipped=num_clipped, strategy=strategy.name)
        except (OperationalError, SQLTimeoutError):
            raise  # the database is unreachable or busy: the round stays aggregating, retried next sweep
        except Exception as exc:  # noqa: BLE001 - the database refuses these values: retrying cannot help
            log.exception("job %s round %s: recording the aggregate failed; the round and the job are marked failed",
                          job.id, round_.number)
            lifecycle.fail_round(self.state, round_id, f"{type(exc).__name__}: {exc}")
            return False


    def _close_private(self, job: Job, round_: Round, start: GlobalAdapter, updates: list[Update],
                       task_starts: dict, privacy: PrivacySettings) -> bool:
        """A DP job's round: DP-FedAvg over clipped changes (``coordinator/privacy/central_noise.py``),
        its epsilon recorded with the new adapter. A round without updates releases nothing: the
        adapter carries over and no noise is drawn (the accountant does not count it)."""
        state = self.state
        try:
            current = state.adapters.tensors(start.weights_sha256)
            deltas, num_clipped = [], 0
            for update in updates:
                delta, was_clipped = _private_delta(state, job, current, start.weights_sha256, update, privacy,
                                                    *task_starts.get(update.task_id, (None, None)))
                deltas.append(delta)
                num_clipped += was_clipped
            if not deltas:
                aggregated = current
            elif privacy.local_noise:      # the devices added the noise; the server cannot clip it away
                aggregated = private_mean(current, deltas, clip_norm=privacy.clip_norm, noise_multiplier=0.0,
                                          denominator=len(deltas), check_norms=False)
            else:
                aggregated = private_mean(current, deltas, clip_norm=privacy.clip_norm,
                                          noise_multiplier=privacy.noise_multiplier,
                                          denominator=job.devices_per_round)
            weights_ref, ptd_ref = state.adapters.store(aggregated)
        except Exception as exc:  # noqa: BLE001 - recorded as the round's failure, never retried
            log.exception("job %s round %s: private aggregation failed; the round and the job are marked failed",
                          job.id, round_.number)
            lifecycle.fail_round(state, round_.id, f"{type(exc).__name__}: {exc}")
            return False
        try:
            return lifecycle.record_aggregate(
                state, round_.id, config_sha256=start.config_sha256, weights=weights_ref, ptd=ptd_ref,
                num_updates=len(updates), num_examples=sum(u.num_examples for u in updates),
                num_clipped=num_clipped, strategy=f"dp-fedavg ({privacy.mode})")
        except (OperationalError, SQLTimeoutError):
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s round %s: recording the aggregate failed; the round and the job are marked failed",
                          job.id, round_.number)
            lifecycle.fail_round(state, round_.id, f"{type(exc).__name__}: {exc}")
            return False


def _private_delta(state: ServiceState, job: Job, current, start_sha256: str, update: Update,
                   privacy: PrivacySettings, artifact_id: int | None, task_start_sha256: str | None):
    """An update's change from the adapter its device started from, clipped to C in the device's
    own layout (central DP; under local DP it carries the device's noise and is left as sent),
    then lifted into the job's layout (zero where the device's tier trained nothing)."""
    tensors = _load_update(state, update.sha256)
    device_start = current if task_start_sha256 in (None, start_sha256) else state.adapters.tensors(task_start_sha256)
    if privacy.local_noise:
        delta = {key: np.asarray(value, dtype=np.float64) - np.asarray(device_start[key], dtype=np.float64)
                 for key, value in tensors.items()}
        was_clipped = False
    else:
        delta, was_clipped = clipped_delta(tensors, device_start, privacy.clip_norm)
    if artifact_id is not None and artifact_id != job.artifact_id:
        tier_info, reference_info = state.artifact_info(artifact_id), state.artifact_info(job.artifact_id)
        tier, reference_tier = tier_info.artifact.manifest["tier"], reference_info.artifact.manifest["tier"]
        if compiled_tier(tier) != compiled_tier(reference_tier):
            shapes = {key: value.shape for key, value in current.items()}
            lifted, _ = lift({k: v.astype(np.float32) for k, v in delta.items()}, tier_info.layout,
                             reference_info.layout, shapes)
            delta = {k: v.astype(np.float64) for k, v in lifted.items()}
    return delta, was_clipped


def _client_update(state: ServiceState, job: Job, current, start_sha256: str, update: Update, scale: float,
                   artifact_id: int | None, task_start_sha256: str | None) -> ClientUpdate:
    """An accepted update as the strategy sees it: in the job's (reference) layout.

    A change longer than the round's bound is first scaled down (``scale`` < 1) against the
    adapter the device started from. An update trained on another tier is then lifted into
    the reference shapes, zero outside the slice the device trained, and says which slice
    that was (``trained``).
    """
    tensors, trained = _load_update(state, update.sha256), None
    if scale != 1.0:
        device_start = current if task_start_sha256 in (None, start_sha256) else \
            state.adapters.tensors(task_start_sha256)
        tensors = scaled(tensors, device_start, scale)
    if artifact_id is not None and artifact_id != job.artifact_id:
        tier_info, reference_info = state.artifact_info(artifact_id), state.artifact_info(job.artifact_id)
        # The job's own tier in another format (an ONNX Runtime device) has the job's layout
        # exactly: nothing to lift.
        tier, reference_tier = tier_info.artifact.manifest["tier"], reference_info.artifact.manifest["tier"]
        if compiled_tier(tier) != compiled_tier(reference_tier):
            shapes = {key: value.shape for key, value in current.items()}
            tensors, trained = lift(tensors, tier_info.layout, reference_info.layout, shapes)
    return ClientUpdate(tensors=tensors, num_examples=update.num_examples, device_id=update.device_id,
                        loss_before=update.loss_before, loss_after=update.loss_after, trained=trained)


def _trained_values(state: ServiceState, artifact_id: int) -> int:
    """How many values an update of this artifact's tier holds (its LoRA tensors' elements)."""
    return sum(math.prod(spec["shape"]) for spec in state.artifact_info(artifact_id).tensors)


def _load_update(state: ServiceState, sha256: str):
    from safetensors.numpy import load

    return load(state.blobs.read_bytes(sha256))
