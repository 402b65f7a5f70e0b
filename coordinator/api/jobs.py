"""Jobs (admin): create, list, inspect, pause, resume, cancel, a round's details, and a round's global adapter."""

from __future__ import annotations

from flask import Blueprint, Response, request, url_for
from sqlalchemy import select

from coordinator.api.common import json_body, state
from coordinator.auth import admin_required
from coordinator.errors import ApiError
from coordinator.models import (Artifact, Device, Evaluation, GlobalAdapter, Job, Round, Task,
                                Update)
from coordinator.services import lifecycle
from coordinator.services.jobs import MAX_ROUNDS, parse_job_spec
from coordinator.services.payloads import job_payload, round_detail_payload
from coordinator.services.pruning_sources import job_pruning_sources

bp = Blueprint("jobs", __name__)


def _payload(session, job: Job) -> dict:
    artifact = session.get(Artifact, job.artifact_id) if job.artifact_id else None
    rounds = session.scalars(select(Round).where(Round.job_id == job.id)).all()
    adapters = session.scalars(select(GlobalAdapter).where(GlobalAdapter.job_id == job.id)).all()
    evaluations = session.scalars(select(Evaluation).where(Evaluation.job_id == job.id)).all()
    return job_payload(job, artifact, list(rounds), list(adapters), list(evaluations),
                       job_pruning_sources(session, job.id))


def _job_or_404(session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise ApiError("not_found", f"no job {job_id}")
    return job


@bp.post("/jobs")
@admin_required
def create_job():
    """Create a job; it starts ``preparing`` (artifact built in the background), then ``running``."""
    st = state()
    job_id = lifecycle.create_job(st, parse_job_spec(json_body(), st.settings.MAX_UPDATE_NORM))
    with st.db.read() as session:
        body = _payload(session, _job_or_404(session, job_id))
    return body, 202, {"Location": url_for("jobs.get_job", job_id=job_id)}


@bp.get("/jobs")
@admin_required
def list_jobs():
    with state().db.read() as session:
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
        return {"jobs": [_payload(session, job) for job in jobs]}


@bp.get("/jobs/<id:job_id>")
@admin_required
def get_job(job_id: int):
    with state().db.read() as session:
        return _payload(session, _job_or_404(session, job_id))


def _control(job_id: int, action) -> dict:
    st = state()
    action(st, job_id)
    with st.db.read() as session:
        return _payload(session, _job_or_404(session, job_id))


@bp.post("/jobs/<id:job_id>/cancel")
@admin_required
def cancel_job(job_id: int):
    """Stop a job: no more tasks or results; its open round is cancelled, closed rounds stay."""
    return _control(job_id, lifecycle.cancel_job)


@bp.post("/jobs/<id:job_id>/pause")
@admin_required
def pause_job(job_id: int):
    """Hand out no new tasks and open no new round; uploads for the open round still count."""
    return _control(job_id, lifecycle.pause_job)


@bp.post("/jobs/<id:job_id>/resume")
@admin_required
def resume_job(job_id: int):
    """Run a paused job again (its next round opens now if the last one closed while paused)."""
    return _control(job_id, lifecycle.resume_job)


@bp.get("/jobs/<id:job_id>/rounds/<id:number>")
@admin_required
def get_round(job_id: int, number: int):
    """Round ``number`` (1..rounds) with its adapter, evaluation, and every device's task and result."""
    with state().db.read() as session:
        _job_or_404(session, job_id)
        round_ = None if number > MAX_ROUNDS else session.scalars(
            select(Round).where(Round.job_id == job_id, Round.number == number)).one_or_none()
        if round_ is None:
            hint = (" (round 0 is the initial adapter: initial_adapter and initial_evaluation in GET /jobs/<id>)"
                    if number == 0 else "")
            raise ApiError("not_found", f"job {job_id} has no round {number}{hint}")
        adapter = session.scalars(select(GlobalAdapter).where(GlobalAdapter.job_id == job_id,
                                                              GlobalAdapter.round == number)).one_or_none()
        evaluation = session.scalars(select(Evaluation).where(Evaluation.job_id == job_id,
                                                              Evaluation.round == number)).one_or_none()
        tasks = session.scalars(select(Task).where(Task.round_id == round_.id)).all()
        updates = session.scalars(select(Update).where(Update.round_id == round_.id)).all()
        device_ids = {t.device_id for t in tasks}
        devices = {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(device_ids)))} if device_ids \
            else {}
        return round_detail_payload(round_, adapter, evaluation, list(tasks), list(updates), devices)


@bp.post("/jobs/<id:job_id>/rounds/<id:number>/close")
@admin_required
def close_round(job_id: int, number: int):
    """Close open round ``number`` now with the results it has (409 ``round_closed`` if it is not open)."""
    st = state()
    with st.db.read() as session:
        _job_or_404(session, job_id)
    lifecycle.close_round_now(st, job_id, number)
    return get_round(job_id, number)


@bp.get("/jobs/<id:job_id>/adapter")
@admin_required
def get_adapter(job_id: int):
    """The global adapter after round N (``?round=N``, default the latest) as a zipped PEFT directory."""
    st = state()
    requested = request.args.get("round")
    if requested is not None and not (requested.isdigit() and len(requested) < 10):
        raise ApiError("bad_request", f"round must be a non-negative integer, got {requested!r}")
    with st.db.read() as session:
        _job_or_404(session, job_id)
        query = select(GlobalAdapter).where(GlobalAdapter.job_id == job_id)
        if requested is None:
            adapter = session.scalars(query.order_by(GlobalAdapter.round.desc()).limit(1)).first()
        else:
            adapter = session.scalars(query.where(GlobalAdapter.round == int(requested))).one_or_none()
    if adapter is None:
        which = "any round" if requested is None else f"round {requested}"
        raise ApiError("not_found", f"job {job_id} has no global adapter for {which} yet")
    data = st.adapters.zip_bytes(adapter.config_sha256, adapter.weights_sha256)
    filename = f"pockettune-job{job_id}-round{adapter.round}-adapter.zip"
    return Response(data, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "PocketTune-Adapter-Round": str(adapter.round)})
