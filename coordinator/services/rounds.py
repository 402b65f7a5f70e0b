"""How a round ends: frozen (no more results), aggregated once, and the next one opened.

A round's life: ``open`` -> ``aggregating`` -> ``closed``.

- **Freezing** happens in the same locked transaction that sees the reason: the upload that
  brings the round to ``min_updates`` accepted results, or the first transaction (request or
  deadline watcher) that finds the deadline passed. From then on the round accepts no result
  (409), so its set of updates is fixed.
- **Aggregating** reads that fixed set, runs the job's strategy and writes the new global
  adapter's blobs *without* holding any lock (it can take a while, and the inputs can no
  longer change). Then one short locked transaction records the global adapter, marks the
  round closed and opens the next round (or completes the job), only if the round is still
  ``aggregating``. Two closers racing (the request that froze the round and the watcher, or
  two coordinator processes on one PostgreSQL) compute the same bytes; the lock and the
  status check let exactly one record them, and the unique ``(job, round)`` constraints on
  global adapters and rounds make a second record impossible even without the check.
- A crash anywhere leaves either an ``open`` round (nothing happened), or an ``aggregating``
  one that the watcher closes after restart: blobs are content-addressed, so redoing the
  aggregation writes the same files.

A round that reaches its deadline with fewer than ``min_updates`` results is aggregated
with what it has; with none, the global adapter carries over unchanged (``num_updates`` 0).
Once recorded, the new global adapter is queued for evaluation (``services/evaluation.py``).

**Failures stay inside their round.** If computing the aggregate raises (a strategy's error,
an update blob that cannot be read), retrying cannot help: the round is marked ``failed``
with the reason and its job ``failed`` with the same, once, and nothing is retried. If only
recording fails (the database is briefly unreachable), the round stays ``aggregating`` and
the next sweep tries again. Either way :meth:`RoundCloser.sweep` goes on with the next round,
so one job's trouble never holds up another job's rounds.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SQLTimeoutError

from coordinator.models import (CloseReason, GlobalAdapter, Job, JobStatus, Round, RoundStatus, Task, Update, utcnow)
from coordinator.services.norm_clipping import clip_scales, scaled
from coordinator.strategies import ClientUpdate, get_strategy

log = logging.getLogger(__name__)

#: A failed round's error is kept up to this length.
MAX_ERROR_CHARS = 2000


def open_round(session, job: Job, number: int, now) -> Round:
    """Add round ``number`` of ``job`` (the caller holds the locks and commits)."""
    round_ = Round(job_id=job.id, number=number, status=RoundStatus.OPEN, opened_at=now,
                   deadline_at=now + timedelta(seconds=job.round_deadline_s), num_updates=0)
    session.add(round_)
    session.flush()
    return round_


def freeze(round_: Round, reason: str, now) -> None:
    """Stop ``round_`` accepting results (caller holds its lock)."""
    round_.status, round_.frozen_at, round_.close_reason = RoundStatus.AGGREGATING, now, reason


class RoundCloser:
    """Aggregates frozen rounds exactly once and moves jobs on to their next round."""

    def __init__(self, state):
        self.state = state
        # One aggregation at a time per process: a request that froze a round and the watcher
        # that found it frozen queue here, and the second finds it closed (so the request's
        # answer reliably says "closed"). Across processes, the round's row lock decides.
        self._lock = threading.Lock()

    # --- freezing at the deadline --------------------------------------------------------------

    def sweep(self) -> int:
        """Freeze rounds past their deadline and close every frozen round; returns rounds closed.

        Each round is handled on its own: an error in one is logged and the sweep goes on.
        """
        db, now = self.state.db, utcnow()
        with db.read() as session:
            overdue = session.scalars(select(Round.id).where(
                Round.status == RoundStatus.OPEN, Round.deadline_at <= now)).all()
        for round_id in overdue:
            try:
                with db.write() as session:
                    round_ = db.lock(session, Round, round_id)
                    if round_.status == RoundStatus.OPEN and round_.deadline_at <= utcnow():
                        freeze(round_, CloseReason.DEADLINE, utcnow())
                        log.info("round %s: deadline passed with %s update(s)", round_id, round_.num_updates)
            except Exception as exc:  # noqa: BLE001 - one round's trouble must not stop the others
                log.warning("round %s: could not freeze at its deadline (%s: %s); retrying next tick",
                            round_id, type(exc).__name__, exc)
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

    # --- aggregation ---------------------------------------------------------------------------

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
            self._fail(round_id, f"{type(exc).__name__}: {exc}")
            return False
        num_clipped = sum(scale < 1.0 for scale in scales)
        try:
            return self._record(round_id, start, updates, strategy.name, weights_ref, ptd_ref, num_clipped)
        except (OperationalError, SQLTimeoutError):
            raise  # the database is unreachable or busy: the round stays aggregating, retried next sweep
        except Exception as exc:  # noqa: BLE001 - the database refuses these values: retrying cannot help
            log.exception("job %s round %s: recording the aggregate failed; the round and the job are marked failed",
                          job.id, round_.number)
            self._fail(round_id, f"{type(exc).__name__}: {exc}")
            return False

    def _record(self, round_id: int, start: GlobalAdapter, updates, strategy_name: str, weights_ref, ptd_ref,
                num_clipped: int) -> bool:
        """Store the new global adapter, close the round, open the next one (one locked transaction)."""
        state, db = self.state, self.state.db
        with db.write() as session:
            round_ = db.lock(session, Round, round_id)
            if round_.status != RoundStatus.AGGREGATING:
                return False
            now = utcnow()
            session.add(GlobalAdapter(
                job_id=round_.job_id, round=round_.number, config_sha256=start.config_sha256,
                weights_sha256=weights_ref.sha256, weights_size=weights_ref.size,
                ptd_sha256=ptd_ref.sha256, ptd_size=ptd_ref.size, num_updates=len(updates),
                num_examples=sum(u.num_examples for u in updates), num_clipped=num_clipped,
                strategy=strategy_name, created_at=now))
            round_.status, round_.closed_at = RoundStatus.CLOSED, now
            job = db.lock(session, Job, round_.job_id)
            if job.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                if round_.number >= job.rounds:
                    job.status = JobStatus.COMPLETED
                elif job.status == JobStatus.RUNNING:
                    open_round(session, job, round_.number + 1, now)
                # paused: the next round opens when the job is resumed (services/job_control.py)
                job.updated_at = now
        log.info("job %s round %s closed (%s, %d update(s), %d clipped)", job.id, round_.number,
                 round_.close_reason, len(updates), num_clipped)
        state.evaluator.submit(job.id, round_.number)  # scored in the background, never waited for
        return True

    def _fail(self, round_id: int, error: str) -> None:
        """Mark an aggregating round ``failed`` with ``error``, and its job failed with it."""
        error = error[:MAX_ERROR_CHARS]
        db = self.state.db
        with db.write() as session:
            round_ = db.lock(session, Round, round_id)
            if round_.status != RoundStatus.AGGREGATING:
                return
            now = utcnow()
            round_.status, round_.closed_at, round_.error = RoundStatus.FAILED, now, error
            job = db.lock(session, Job, round_.job_id)
            if job.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                job.status, job.updated_at = JobStatus.FAILED, now
                job.error = f"round {round_.number} could not be aggregated: {error}"


def _client_update(state, job: Job, current, start_sha256: str, update: Update, scale: float,
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
        from coordinator.services.adapter_mapping import lift
        from coordinator.services.artifacts import compiled_tier

        tier_manifest = state.artifact_info(artifact_id).artifact.manifest
        reference_manifest = state.artifact_info(job.artifact_id).artifact.manifest
        # The job's own tier in another format (an ONNX Runtime device) has the job's layout
        # exactly: nothing to lift.
        if compiled_tier(tier_manifest["tier"]) != compiled_tier(reference_manifest["tier"]):
            from coordinator.services.tiers import layout_of

            shapes = {key: value.shape for key, value in current.items()}
            tensors, trained = lift(tensors, layout_of(state, artifact_id), layout_of(state, job.artifact_id),
                                    shapes)
    return ClientUpdate(tensors=tensors, num_examples=update.num_examples, device_id=update.device_id,
                        loss_before=update.loss_before, loss_after=update.loss_after, trained=trained)


def _trained_values(state, artifact_id: int) -> int:
    """How many values an update of this artifact's tier holds (its LoRA tensors' elements)."""
    return sum(math.prod(spec["shape"]) for spec in state.artifact_info(artifact_id).tensors)


def _load_update(state, sha256: str):
    from safetensors.numpy import load

    return load(state.blobs.read_bytes(sha256))
