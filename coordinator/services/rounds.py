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
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select

from coordinator.models import (CloseReason, GlobalAdapter, Job, JobStatus, Round, RoundStatus, Task, Update, utcnow)
from coordinator.strategies import ClientUpdate, get_strategy

log = logging.getLogger(__name__)


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
        """Freeze rounds past their deadline and close every frozen round; returns rounds closed."""
        db, now = self.state.db, utcnow()
        with db.read() as session:
            overdue = session.scalars(select(Round.id).where(
                Round.status == RoundStatus.OPEN, Round.deadline_at <= now)).all()
        for round_id in overdue:
            with db.write() as session:
                round_ = db.lock(session, Round, round_id)
                if round_.status == RoundStatus.OPEN and round_.deadline_at <= utcnow():
                    freeze(round_, CloseReason.DEADLINE, utcnow())
                    log.info("round %s: deadline passed with %s update(s)", round_id, round_.num_updates)
        with db.read() as session:
            frozen = session.scalars(select(Round.id).where(Round.status == RoundStatus.AGGREGATING)
                                     .order_by(Round.id)).all()
        return sum(self.close(round_id) for round_id in frozen)

    # --- aggregation ---------------------------------------------------------------------------

    def close(self, round_id: int) -> bool:
        """Aggregate frozen round ``round_id`` and open the next one; False if nothing to do."""
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
            task_artifacts = dict(session.execute(select(Task.id, Task.artifact_id).where(
                Task.round_id == round_id)).all())
        strategy = get_strategy(job.strategy)
        current = state.adapters.tensors(start.weights_sha256)
        client_updates = [_client_update(state, job, current, u, task_artifacts.get(u.task_id)) for u in updates]
        aggregated = strategy.aggregate_train(current, client_updates)
        weights_ref, ptd_ref = state.adapters.store(aggregated)

        with db.write() as session:
            round_ = db.lock(session, Round, round_id)
            if round_.status != RoundStatus.AGGREGATING:
                return False
            now = utcnow()
            session.add(GlobalAdapter(
                job_id=round_.job_id, round=round_.number, config_sha256=start.config_sha256,
                weights_sha256=weights_ref.sha256, weights_size=weights_ref.size,
                ptd_sha256=ptd_ref.sha256, ptd_size=ptd_ref.size, num_updates=len(updates),
                num_examples=sum(u.num_examples for u in updates), strategy=strategy.name, created_at=now))
            round_.status, round_.closed_at = RoundStatus.CLOSED, now
            job = db.lock(session, Job, round_.job_id)
            if job.status in (JobStatus.RUNNING, JobStatus.PAUSED):
                if round_.number >= job.rounds:
                    job.status = JobStatus.COMPLETED
                elif job.status == JobStatus.RUNNING:
                    open_round(session, job, round_.number + 1, now)
                # paused: the next round opens when the job is resumed (services/job_control.py)
                job.updated_at = now
        log.info("job %s round %s closed (%s, %d update(s))", job.id, round_.number, round_.close_reason,
                 len(updates))
        state.evaluator.submit(job.id, round_.number)  # scored in the background, never waited for
        return True


def _client_update(state, job: Job, current, update: Update, artifact_id: int | None) -> ClientUpdate:
    """An accepted update as the strategy sees it: in the job's (reference) layout.

    An update trained on another tier is lifted into the reference shapes, zero outside the
    slice the device trained, and says which slice that was (``trained``).
    """
    tensors, trained = _load_update(state, update.sha256), None
    if artifact_id is not None and artifact_id != job.artifact_id:
        from coordinator.services.adapter_mapping import lift
        from coordinator.services.tiers import layout_of

        shapes = {key: value.shape for key, value in current.items()}
        tensors, trained = lift(tensors, layout_of(state, artifact_id), layout_of(state, job.artifact_id), shapes)
    return ClientUpdate(tensors=tensors, num_examples=update.num_examples, device_id=update.device_id,
                        loss_before=update.loss_before, loss_after=update.loss_after, trained=trained)


def _load_update(state, sha256: str):
    from safetensors.numpy import load

    return load(state.blobs.read_bytes(sha256))
