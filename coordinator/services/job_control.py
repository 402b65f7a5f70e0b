"""What an admin can do to a job: create, pause, resume and cancel it.

Both the JSON API (admin token) and the dashboard (admin login) act through these
functions, so the two can never disagree on what a transition means.

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

Lock order is the one every transaction here follows: a round's row before its job's.
"""

from __future__ import annotations

from sqlalchemy import select

from coordinator.errors import ApiError
from coordinator.models import Job, JobStatus, Round, RoundStatus, utcnow
from coordinator.services.jobs import JobSpec


def create_job(state, spec: JobSpec) -> int:
    """Store a validated job as ``preparing`` and queue its artifact; returns its id."""
    now = utcnow()
    with state.db.write() as session:
        job = Job(**spec.__dict__, status=JobStatus.PREPARING, created_at=now, updated_at=now)
        session.add(job)
        session.flush()
        job_id = job.id
    state.worker.submit(job_id)
    return job_id


def _transition(state, job_id: int, allowed: tuple[str, ...], new_status: str, verb: str) -> Job:
    db = state.db
    with db.write() as session:
        job = db.lock(session, Job, job_id)
        if job is None:
            raise ApiError("not_found", f"no job {job_id}")
        if job.status not in allowed:
            raise ApiError("job_not_running", f"job {job_id} is {job.status}; only a job that is "
                                              f"{' or '.join(allowed)} can be {verb}")
        job.status, job.updated_at = new_status, utcnow()
        return job


def cancel_job(state, job_id: int) -> None:
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


def pause_job(state, job_id: int) -> None:
    """Hand out no new tasks and open no new round until :func:`resume_job`."""
    _transition(state, job_id, (JobStatus.RUNNING,), JobStatus.PAUSED, "paused")


def resume_job(state, job_id: int) -> None:
    """Run a paused job again; open its next round if the last one closed meanwhile."""
    from coordinator.services.rounds import open_round

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
        now = utcnow()
        if round_.number < job.rounds:
            open_round(session, job, round_.number + 1, now)
        else:
            job.status = JobStatus.COMPLETED
        job.updated_at = now


def close_round_now(state, job_id: int, number: int) -> None:
    """Freeze open round ``number`` of ``job_id`` now (reason ``admin``) and aggregate what it has.

    The round then closes exactly as at its deadline: the accepted updates are aggregated (or
    the adapter carries over when there are none) and the next round opens. A simulator uses
    this when its virtual deadline has passed long before the coordinator's real one.
    """
    from coordinator.models import CloseReason
    from coordinator.services.rounds import freeze

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
