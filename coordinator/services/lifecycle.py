"""Where a job's and a round's life are decided: every status change of either happens here.

A job: ``preparing`` -> ``running`` <-> ``paused`` -> ``completed``, or ``failed`` (its
artifact could not be prepared, or a round could not be aggregated), or ``cancelled`` (an
admin stopped it while it was preparing, running or paused).

A round: ``open`` -> ``aggregating`` -> ``closed``, or ``failed`` (its aggregation raised),
or ``cancelled`` (its job was cancelled before it closed).

- **Opening**: round 1 when the job's artifact is ready (:func:`start_job`); round N+1 when
  round N is closed and the job is running (:func:`record_aggregate`), or when a job paused
  meanwhile is resumed (:func:`resume_job`). Both go through :func:`_advance`, which completes
  the job instead after its last round.
- **Freezing** (``open`` -> ``aggregating``) happens in the same locked transaction that sees
  the reason: the upload that brings the round to ``min_updates`` accepted results
  (:func:`count_accepted_update`), the first request or deadline sweep that finds the deadline
  passed (:func:`freeze_if_overdue`, :func:`freeze_overdue_rounds`), or an admin
  (:func:`close_round_now`). From then on the round accepts no result (409), so its set of
  updates is fixed and can be aggregated without a lock (``services/aggregation.py``).
- **Closing** records the new global adapter, closes the round and advances the job in one
  short locked transaction, only if the round is still ``aggregating``: two closers racing
  (the request that froze the round and the watcher, or two coordinator processes on one
  PostgreSQL) compute the same bytes, and the lock and the status check let exactly one
  record them (the unique ``(job, round)`` constraints back this up).

Admin verbs (the JSON API and the dashboard both act through these functions, so the two can
never disagree on what a transition means):

- **pause** (``running`` -> ``paused``): no new tasks are handed out and no new round is
  opened. Devices already training in the open round may still upload (their work is not
  thrown away) and the round still closes at ``min_updates`` or its deadline; the round
  after it waits for ``resume``.
- **resume** (``paused`` -> ``running``): tasks are handed out again; if the job's last
  round closed while it was paused, the next one opens now (or the job completes, if that
  was its last round).
- **close a round now** (an open round -> frozen, then aggregated as at its deadline).
- **cancel** (``preparing``/``running``/``paused`` -> ``cancelled``): no more tasks or
  results; an open or aggregating round is cancelled, closed rounds and their adapters stay.

Functions that take a ``session`` run inside the caller's write transaction, which already
holds the round's lock; the others open their own. Lock order is the one every transaction
follows (``coordinator/db.py``): a round's row before its job's.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select

from coordinator.errors import ApiError
from coordinator.models import CloseReason, GlobalAdapter, Job, JobStatus, Round, RoundStatus, utcnow
from coordinator.privacy.accountant import epsilon_after
from coordinator.privacy.settings import PrivacySettings
from coordinator.services.jobs import JobSpec
from coordinator.services.state import ServiceState
from coordinator.storage import BlobRef

log = logging.getLogger(__name__)

#: A failed round's error is kept up to this length.
MAX_ERROR_CHARS = 2000


# --- a job's start -------------------------------------------------------------------------------

def create_job(state: ServiceState, spec: JobSpec) -> int:
    """Store a validated job as ``preparing`` and queue its artifact; returns its id."""
    now = utcnow()
    with state.db.write() as session:
        job = Job(**spec.__dict__, status=JobStatus.PREPARING, created_at=now, updated_at=now)
        session.add(job)
        session.flush()
        job_id = job.id
    state.worker.submit(job_id)
    return job_id


def start_job(state: ServiceState, job_id: int, artifact_id: int, initial_config: BlobRef,
              initial_weights: BlobRef, initial_ptd: BlobRef) -> None:
    """``preparing`` -> ``running``: record round 0's adapter (the artifact's initial one) and open round 1.

    Does nothing if the job is no longer preparing (it was cancelled while its artifact was
    being built).
    """
    db = state.db
    with db.write() as session:
        job = db.lock(session, Job, job_id)
        if job is None or job.status != JobStatus.PREPARING:
            return  # cancelled meanwhile
        now = utcnow()
        session.add(GlobalAdapter(
            job_id=job.id, round=0, config_sha256=initial_config.sha256,
            weights_sha256=initial_weights.sha256, weights_size=initial_weights.size,
            ptd_sha256=initial_ptd.sha256, ptd_size=initial_ptd.size,
            num_updates=0, num_examples=0, strategy=None, created_at=now))
        job.artifact_id = artifact_id
        job.status, job.updated_at = JobStatus.RUNNING, now
        _open_round(session, job, 1, now)
    log.info("job %s: running (artifact %s)", job_id, artifact_id)
    state.evaluator.submit(job_id, 0)  # the initial adapter: the tier's zero-shot score


def fail_preparation(state: ServiceState, job_id: int, error: str) -> None:
    """``preparing`` -> ``failed`` with ``error`` (a job cancelled meanwhile stays cancelled)."""
    db = state.db
    with db.write() as session:
        job = db.lock(session, Job, job_id)
        if job is not None and job.status == JobStatus.PREPARING:
            job.status, job.error, job.updated_at = JobStatus.FAILED, error, utcnow()


# --- a round's freezing ----------------------------------------------------------------------------

def freeze(round_: Round, reason: str, now) -> None:
    """Stop ``round_`` accepting results, for ``reason`` (a :class:`CloseReason`; caller holds its lock)."""
    round_.status, round_.frozen_at, round_.close_reason = RoundStatus.AGGREGATING, now, reason


def freeze_if_overdue(round_: Round, now) -> bool:
    """Freeze an open ``round_`` whose deadline has passed (caller holds its lock); True if it did.

    Any transaction that finds the deadline passed records it at once, so that the round's
    fate does not wait for the next deadline sweep.
    """
    if round_.status == RoundStatus.OPEN and round_.deadline_at <= now:
        freeze(round_, CloseReason.DEADLINE, now)
        return True
    return False


def count_accepted_update(round_: Round, job: Job, now) -> bool:
    """Count one more accepted result in ``round_``, freezing it at the job's ``min_updates``.

    Called in the upload's transaction, under the round's lock; True if this result froze
    the round (the caller then has it aggregated).
    """
    round_.num_updates += 1
    if round_.num_updates >= job.min_updates:
        freeze(round_, CloseReason.MIN_UPDATES, now)
        return True
    return False


def freeze_overdue_rounds(state: ServiceState) -> None:
    """Freeze every open round past its deadline, each in its own locked transaction.

    An error on one round is logged and the others go on; the next sweep tries it again.
    """
    db, now = state.db, utcnow()
    with db.read() as session:
        overdue = session.scalars(select(Round.id).where(
            Round.status == RoundStatus.OPEN, Round.deadline_at <= now)).all()
    for round_id in overdue:
        try:
            with db.write() as session:
                round_ = db.lock(session, Round, round_id)
                if freeze_if_overdue(round_, utcnow()):
                    log.info("round %s: deadline passed with %s update(s)", round_id, round_.num_updates)
        except Exception as exc:  # noqa: BLE001 - one round's trouble must not stop the others
            log.warning("round %s: could not freeze at its deadline (%s: %s); retrying next tick",
                        round_id, type(exc).__name__, exc)


def close_round_now(state: ServiceState, job_id: int, number: int) -> None:
    """Freeze open round ``number`` of ``job_id`` now (reason ``admin``) and aggregate what it has.

    The round then closes exactly as at its deadline: the accepted updates are aggregated (or
    the adapter carries over when there are none) and the next round opens. A simulator uses
    this when its virtual deadline has passed long before the coordinator's real one.
    """
    db = state.db
    with db.read() as session:
        round_id = session.scalar(select(Round.id).where(Round.job_id == job_id, Round.number == number))
    if round_id is None:
        raise ApiError("not_found", f"job {job_id} has no round {number}")
    with db.write() as session:
        round_ = db.lock(session, Round, round_id)
        if round_.status != RoundStatus.OPEN:
            raise ApiError("round_closed", f"round {number} is {round_.status}; only an open round can be closed")
        freeze(round_, CloseReason.ADMIN, utcnow())
    state.close_round(round_id)


# --- a round's end -----------------------------------------------------------------------------------

def record_aggregate(state: ServiceState, round_id: int, *, config_sha256: str, weights: BlobRef, ptd: BlobRef,
                     num_updates: int, num_examples: int, num_clipped: int, strategy: str) -> bool:
    """Store a frozen round's new global adapter, close the round and advance its job (one locked
    transaction); False if the round is no longer ``aggregating`` (another closer recorded it, or
    the job was cancelled). The new adapter is then queued for evaluation.
    """
    db = state.db
    with db.write() as session:
        round_ = db.lock(session, Round, round_id)
        if round_.status != RoundStatus.AGGREGATING:
            return False
        now = utcnow()
        job = db.lock(session, Job, round_.job_id)
        privacy = PrivacySettings.from_dict(job.privacy)
        epsilon = None
        if privacy is not None:     # this round counts if it released a new (noised) adapter
            epsilon = epsilon_after(_released_rounds(session, job.id) + (num_updates > 0), privacy)
        session.add(GlobalAdapter(
            job_id=round_.job_id, round=round_.number, config_sha256=config_sha256,
            weights_sha256=weights.sha256, weights_size=weights.size,
            ptd_sha256=ptd.sha256, ptd_size=ptd.size, num_updates=num_updates,
            num_examples=num_examples, num_clipped=num_clipped, strategy=strategy, epsilon=epsilon,
            created_at=now))
        session.flush()
        round_.status, round_.closed_at = RoundStatus.CLOSED, now
        if job.status in (JobStatus.RUNNING, JobStatus.PAUSED):
            # paused: the next round opens when the job is resumed (resume_job)
            _advance(session, job, round_.number, now)
    log.info("job %s round %s closed (%s, %d update(s), %d clipped)", job.id, round_.number,
             round_.close_reason, num_updates, num_clipped)
    state.evaluator.submit(job.id, round_.number)  # scored in the background, never waited for
    return True


def fail_round(state: ServiceState, round_id: int, error: str) -> None:
    """Mark an aggregating round ``failed`` with ``error``, and its job failed with it.

    Retrying cannot help (a strategy's error, an update blob that cannot be read, values the
    database refuses), so the failure is recorded once and nothing is retried.
    """
    error = error[:MAX_ERROR_CHARS]
    db = state.db
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


def _released_rounds(session, job_id: int) -> int:
    """Rounds of a job that released a new global adapter (aggregated at least one update)."""
    return session.scalar(select(func.count(GlobalAdapter.id)).where(
        GlobalAdapter.job_id == job_id, GlobalAdapter.round >= 1, GlobalAdapter.num_updates > 0)) or 0


def _budget_spent(session, job: Job) -> bool:
    """Whether one more released round would take a DP job past its epsilon budget."""
    privacy = PrivacySettings.from_dict(job.privacy)
    if privacy is None or privacy.epsilon_budget is None:
        return False
    return epsilon_after(_released_rounds(session, job.id) + 1, privacy) > privacy.epsilon_budget


def _open_round(session, job: Job, number: int, now) -> Round:
    """Add round ``number`` of ``job`` (the caller holds the locks and commits)."""
    round_ = Round(job_id=job.id, number=number, status=RoundStatus.OPEN, opened_at=now,
                   deadline_at=now + timedelta(seconds=job.round_deadline_s), num_updates=0)
    session.add(round_)
    session.flush()
    return round_


def _advance(session, job: Job, finished: int, now) -> None:
    """After round ``finished`` closed: complete the job if it was the last, or if one more round
    would spend more than its privacy budget, else open the next round if the job is running (a
    paused one waits for :func:`resume_job`)."""
    if finished >= job.rounds:
        job.status = JobStatus.COMPLETED
    elif _budget_spent(session, job):
        job.status = JobStatus.COMPLETED
        log.info("job %s: its privacy budget allows no further round; completed after round %s", job.id, finished)
    elif job.status == JobStatus.RUNNING:
        _open_round(session, job, finished + 1, now)
    job.updated_at = now


# --- admin verbs -----------------------------------------------------------------------------------

def _transition(state: ServiceState, job_id: int, allowed: tuple[str, ...], new_status: str, verb: str) -> None:
    db = state.db
    with db.write() as session:
        job = db.lock(session, Job, job_id)
        if job is None:
            raise ApiError("not_found", f"no job {job_id}")
        if job.status not in allowed:
            raise ApiError("job_not_running", f"job {job_id} is {job.status}; only a job that is "
                                              f"{' or '.join(allowed)} can be {verb}")
        job.status, job.updated_at = new_status, utcnow()


def cancel_job(state: ServiceState, job_id: int) -> None:
    """Stop a job for good: its open round is cancelled, closed rounds stay."""
    _transition(state, job_id, (JobStatus.PREPARING, JobStatus.RUNNING, JobStatus.PAUSED), JobStatus.CANCELLED,
                "cancelled")
    db = state.db
    # Rounds are locked only after the job's lock is released (lock order: round, then job).
    # An aggregating round is cancelled too: a closer that is aggregating it finds it no longer
    # aggregating when it comes to record, and records nothing.
    unfinished = (RoundStatus.OPEN, RoundStatus.AGGREGATING)
    with db.read() as session:
        round_ids = session.scalars(select(Round.id).where(Round.job_id == job_id,
                                                           Round.status.in_(unfinished))).all()
    for round_id in round_ids:
        with db.write() as session:
            round_ = db.lock(session, Round, round_id)
            if round_.status in unfinished:
                round_.status, round_.closed_at = RoundStatus.CANCELLED, utcnow()


def pause_job(state: ServiceState, job_id: int) -> None:
    """Hand out no new tasks and open no new round until :func:`resume_job`."""
    _transition(state, job_id, (JobStatus.RUNNING,), JobStatus.PAUSED, "paused")


def resume_job(state: ServiceState, job_id: int) -> None:
    """Run a paused job again; open its next round if the last one closed meanwhile."""
    _transition(state, job_id, (JobStatus.PAUSED,), JobStatus.RUNNING, "resumed")
    db = state.db
    with db.read() as session:
        latest = session.scalars(select(Round).where(Round.job_id == job_id)
                                 .order_by(Round.number.desc()).limit(1)).first()
    if latest is None or latest.status != RoundStatus.CLOSED:
        return  # a round is still open or aggregating: closing it opens the next as usual
    with db.write() as session:
        round_ = db.lock(session, Round, latest.id)
        job = db.lock(session, Job, job_id)
        if round_.status != RoundStatus.CLOSED or job.status != JobStatus.RUNNING:
            return
        already = session.scalar(select(Round.id).where(Round.job_id == job_id, Round.number == round_.number + 1))
        if already is not None:
            return
        _advance(session, job, round_.number, utcnow())
