"""Split jobs (MergeSFL): created by the admin, stepped by devices in lock-step.

Admin: ``POST /split-jobs`` (spec, 202: prepared in the background), ``GET /split-jobs``,
``GET /split-jobs/<id>``, ``POST /split-jobs/<id>/clock`` (a conducted job's virtual time).
Device: ``POST /split-jobs/<id>/join`` (the manifest: programs per batch size, start adapter),
``GET /split-jobs/<id>/next`` (what to do now), ``POST .../steps/<n>/features`` and
``GET .../steps/<n>/gradient``, ``POST`` and ``GET .../averagings/<k>/adapter``.

Tensors travel as safetensors bodies (``application/octet-stream``): features (float32
``[batch, seq, hidden]``) with labels (int64 ``[batch, seq]``), a gradient, an adapter. Every body
is checked before anything is stored (size first, then the safetensors header, names, dtypes,
shapes, finite values) and a refused request changes nothing: the step's state, the server's
measurements and the byte counts stay as they were.
"""

from __future__ import annotations

import math

from flask import Blueprint, Response, g, request

from coordinator.api.common import json_body, state
from coordinator.auth import admin_required, device_or_admin_required, device_required
from coordinator.errors import ApiError
from coordinator.services.payloads import blob_url
from coordinator.services.validation import parse_safetensors_header
from coordinator.split.jobs import ConductedClock, parse_split_spec
from coordinator.split.step import StepError

bp = Blueprint("split", __name__)

#: Header and per-tensor slack over a body's exact tensor bytes.
BODY_SLACK_BYTES = 64 * 1024


def _job(job_id: int, *, running: bool = True):
    job = state().split_jobs.get(job_id)
    if running and job.status != "running":
        raise ApiError("job_not_running", f"split job {job_id} is {job.status}"
                                          + (f": {job.error}" if job.error else ""))
    return job


def _session(job_id: int):
    """A running job's session (a job stopped meanwhile has none: 409 like any job not running)."""
    session = _job(job_id).session
    if session is None:
        raise ApiError("job_not_running", f"split job {job_id} was stopped")
    return session


def _worker() -> str:
    return str(g.device.id)


def _refused(error: StepError) -> ApiError:
    return ApiError(error.code, error.message)


def _tensors(names: dict[str, tuple[int, ...]], what: str) -> tuple[dict, int]:
    """The request body as safetensors with exactly the tensors ``names`` (name -> expected
    shape, which bounds the body's size; dtypes and shapes are the session's to check), and
    the body's size in bytes."""
    limit = sum(math.prod(shape) * 8 for shape in names.values()) + BODY_SLACK_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError("payload_too_large", f"{what}: {request.content_length} bytes, at most {limit}")
    data = request.stream.read(limit + 1)       # never more than the limit, even for a chunked body
    if len(data) > limit:
        raise ApiError("payload_too_large", f"{what}: more than {limit} bytes")
    try:
        entries, _ = parse_safetensors_header(data)
    except ApiError as error:
        raise ApiError("bad_request", f"{what}: {error.message}") from None
    if set(entries) != set(names):
        raise ApiError("tensor_names", f"{what}: expected tensors {sorted(names)}, got {sorted(entries)[:8]}")
    from safetensors import SafetensorError
    from safetensors.torch import load          # torch is loaded by then: the job's top runs on it

    try:
        return load(data), len(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ApiError("bad_request", f"{what}: not a readable safetensors body ({error})") from None


def _safetensors_response(tensors: dict) -> Response:
    from safetensors.torch import save

    return Response(save({k: v.contiguous() for k, v in tensors.items()}), mimetype="application/octet-stream")


# --- admin -------------------------------------------------------------------------------------------


@bp.post("/split-jobs")
@admin_required
def create_split_job():
    """Create a split job; it is ``preparing`` (programs compiled) until ``running``."""
    spec = parse_split_spec(json_body())
    job = state().split_jobs.create(spec)
    return job.payload(), 202


@bp.get("/split-jobs")
@admin_required
def list_split_jobs():
    return {"split_jobs": [job.payload() for job in state().split_jobs.all()]}


@bp.get("/split-jobs/<id:job_id>")
@device_or_admin_required
def get_split_job(job_id: int):
    job = _job(job_id, running=False)
    return job.payload() if g.is_admin else job.device_payload()


@bp.post("/split-jobs/<id:job_id>/clock")
@admin_required
def set_clock(job_id: int):
    """A conducted job's virtual time (``{"now": seconds}``), set by the simulator that conducts it."""
    job = _job(job_id, running=False)
    if not isinstance(job.clock, ConductedClock):
        raise ApiError("job_not_running", f"split job {job_id} runs on the wall clock; only a job created with "
                                          "clock=conducted takes its time from the admin")
    body = json_body()
    now = body.get("now")
    if set(body) != {"now"} or isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ApiError("invalid_field", "send {\"now\": seconds}, a finite number")
    job.clock.advance_to(now)
    return {"now": job.clock.now}


@bp.get("/split-jobs/<id:job_id>/adapter")
@admin_required
def get_full_adapter(job_id: int):
    """The job's model as one PEFT adapter (safetensors): the newest average of the devices'
    bottoms and the server's top, for evaluation and deployment (a stopped job's as it stopped)."""
    job = _job(job_id, running=False)
    if job.status not in ("running", "stopped"):
        raise ApiError("job_not_running", f"split job {job_id} is {job.status}: it has no model yet")
    return _safetensors_response(job.full_adapter())


@bp.post("/split-jobs/<id:job_id>/stop")
@admin_required
def stop_split_job(job_id: int):
    """End a running split job now: its model and progress are kept, the top's copy of the model
    is freed, and its devices are told ``job_not_running`` from then on."""
    job = _job(job_id)
    job.stop()
    return job.payload()


# --- devices -----------------------------------------------------------------------------------------


@bp.post("/split-jobs/<id:job_id>/join")
@device_required
def join(job_id: int):
    """Join the job: the manifest (programs per batch size, the start adapter, learning rate)."""
    job = _job(job_id)
    try:
        _session(job_id).join(_worker())
    except StepError as error:
        raise _refused(error) from None
    manifest = dict(job.manifest)
    manifest["programs"] = {size: {part: {**ref, "url": blob_url(ref["sha256"])} for part, ref in files.items()}
                            for size, files in job.manifest["programs"].items()}
    manifest["adapter"] = {**job.manifest["adapter"], "url": blob_url(job.manifest["adapter"]["sha256"])}
    return {"split_job_id": job.job_id, "worker": _worker(), "manifest": manifest,
            "privacy": "the server sees this device's cut-layer features and labels (its text) every step"}


@bp.get("/split-jobs/<id:job_id>/next")
@device_required
def next_action(job_id: int):
    try:
        return _session(job_id).next_action(_worker())
    except StepError as error:
        raise _refused(error) from None


@bp.post("/split-jobs/<id:job_id>/steps/<int:step>/features")
@device_required
def post_features(job_id: int, step: int):
    """Step ``step``'s features and labels (safetensors ``features``, ``labels``)."""
    session = _session(job_id)
    worker = _worker()
    try:
        size = session.planned_size(worker, step)
    except StepError as error:
        raise _refused(error) from None
    tensors, body_size = _tensors({"features": (size, session.seq, session.hidden), "labels": (size, session.seq)},
                                  "features")
    try:
        return session.submit_features(worker, step, tensors["features"], tensors["labels"], body_size), 201
    except StepError as error:
        raise _refused(error) from None


@bp.get("/split-jobs/<id:job_id>/steps/<int:step>/gradient")
@device_required
def get_gradient(job_id: int, step: int):
    try:
        gradient = _session(job_id).gradient(_worker(), step)
    except StepError as error:
        raise _refused(error) from None
    return _safetensors_response({"gradient": gradient})


@bp.post("/split-jobs/<id:job_id>/averagings/<int:number>/adapter")
@device_required
def post_adapter(job_id: int, number: int):
    session = _session(job_id)
    try:
        session.require_joined(_worker())       # not joined: 403 before the body is read
    except StepError as error:
        raise _refused(error) from None
    tensors, body_size = _tensors(dict(session.adapter_keys), "adapter")
    try:
        return session.submit_adapter(_worker(), number, tensors, body_size), 201
    except StepError as error:
        raise _refused(error) from None


@bp.get("/split-jobs/<id:job_id>/averagings/<int:number>/adapter")
@device_required
def get_adapter(job_id: int, number: int):
    try:
        tensors = _session(job_id).averaged_adapter(_worker(), number)
    except StepError as error:
        raise _refused(error) from None
    return _safetensors_response(tensors)
