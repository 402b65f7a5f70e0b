"""``POST /api/v1/tasks/<id>/result``: accept a device's update durably, exactly once, or not at all.

Order of work, and why:

1. Cheap checks without locks (404 unknown task, 403 another device's task, 409 task already
   submitted / round no longer open / deadline passed), then the meta JSON and the update
   itself (:func:`~coordinator.services.validation.validate_update`: names, dtypes, shapes,
   finite, norm). Rejections here touch nothing.
   The meta's claims are checked against the task: at most local steps x batch examples, and
   the sha256 of the adapter this task started from (an update made for another round is
   refused).
2. Stage the update's bytes: written to a temporary file and fsync'd (not yet a blob).
3. One write transaction under the round's lock: check the task and round again (another
   request may have won meanwhile; a rejection now rolls back and discards the staged file,
   so it too changes nothing), insert the ``Update``, mark the task submitted, and count it
   in the round (:func:`~coordinator.services.lifecycle.count_accepted_update`, which freezes
   the round at its ``min_updates``-th result); flush those rows (so a value
   the database refuses fails here, with nothing published), then publish the blob (rename +
   fsync of the directory). Commit.
4. Only then answer 201. So an acknowledged update has its bytes and its row on disk, and a
   coordinator killed at any point before the commit has not acknowledged it.
5. If this upload froze the round, aggregate it now (outside the transaction); if that
   fails or the process dies, the deadline watcher finishes it.
"""

from __future__ import annotations

from sqlalchemy import select

from coordinator.errors import ApiError
from coordinator.models import Device, GlobalAdapter, Job, Round, RoundStatus, Task, TaskStatus, Update, utcnow
from coordinator.services import lifecycle
from coordinator.services.assignment import max_num_examples
from coordinator.services.state import ServiceState
from coordinator.services.validation import (max_encoded_update_bytes, max_update_bytes, max_update_norm,
                                             parse_meta, validate_encoded_update, validate_update)
from models.rank_pruning import effective_rank
from models.update_codecs import get_codec


def _check_state(task: Task, round_: Round, now) -> None:
    if task.status == TaskStatus.SUBMITTED:
        raise ApiError("already_submitted", f"task {task.id} already has an accepted result")
    if round_.status != RoundStatus.OPEN:
        raise ApiError("round_closed", f"round {round_.number} is {round_.status}; it accepts no more results")
    if round_.deadline_at <= now:
        raise ApiError("late", f"round {round_.number} reached its deadline; the result came too late")


def accept_result(state: ServiceState, device: Device, task_id: int, meta_raw: str | bytes | None,
                  update: bytes | None, *, gzipped: bool = False) -> dict:
    """Validate and store one result; returns the response body (raises ``ApiError`` to reject).
    ``gzipped``: the update arrived gzip-compressed (its wire size is the compressed one)."""
    db = state.db
    with db.read() as session:
        task = session.get(Task, task_id)
        if task is None:
            raise ApiError("not_found", f"no task {task_id}")
        if task.device_id != device.id:
            raise ApiError("forbidden", f"task {task_id} belongs to another device")
        round_ = session.get(Round, task.round_id)
        job = session.get(Job, round_.job_id)
        start = session.scalars(select(GlobalAdapter).where(GlobalAdapter.job_id == job.id,
                                                            GlobalAdapter.round == round_.number - 1)).one()
    _check_state(task, round_, utcnow())
    missing = [name for name, value in (("meta", meta_raw), ("update", update)) if value is None]
    if missing:
        raise ApiError("missing_part", f"the upload lacks {' and '.join(missing)}: send multipart/form-data with "
                                       "a meta part (JSON) and an update file part (safetensors)")
    # A device on its own tier is checked against its tier's tensors and the start adapter it got.
    start_adapters = ({task.start_weights_sha256, task.start_ptd_sha256} if task.start_weights_sha256
                      else {start.weights_sha256, start.ptd_sha256})
    meta = parse_meta(meta_raw, max_num_examples=max_num_examples(task, job), start_adapters=start_adapters)
    info = state.artifact_info(task.artifact_id or job.artifact_id)
    codec = get_codec(job.update_encoding)
    wire_bytes = len(update)
    if gzipped:
        limit = max_update_bytes(info.tensors) if not codec.sends_change else \
            max_encoded_update_bytes(info.tensors, codec)
        update = _gunzip(update, limit)
    check = validate_update if not codec.sends_change else \
        lambda *args: validate_encoded_update(*args, codec=codec)
    validated = check(update, info.tensors,
                      state.adapters.tensors(task.start_weights_sha256 or start.weights_sha256),
                      max_update_norm(job, info.tensors))
    # What is stored is what aggregation reads: the trained fp32 tensors (decoded from a change).
    stored_bytes = update if not codec.sends_change else _safetensors(validated.tensors)
    rank = effective_rank(validated.tensors)

    late, froze = False, False
    with state.blobs.stage(stored_bytes) as staged:
        with db.write() as session:
            round_ = db.lock(session, Round, round_.id)
            task = session.get(Task, task_id, populate_existing=True)
            now = utcnow()
            if lifecycle.freeze_if_overdue(round_, now):
                # Record what the deadline means for the round (commit), then refuse the result.
                late = True
            else:
                _check_state(task, round_, now)
                ref = staged.ref
                stored = Update(task_id=task.id, round_id=round_.id, device_id=device.id, sha256=ref.sha256,
                                size=ref.size, wire_bytes=wire_bytes, delta_norm=validated.delta_norm,
                                received_at=now,
                                effective_rank=rank, **meta.to_dict())
                session.add(stored)
                task.status, task.submitted_at = TaskStatus.SUBMITTED, now
                froze = lifecycle.count_accepted_update(round_, job, now)
                session.get(Device, device.id).last_seen_at = now
                # The rows go to the database before the blob is published: if the database
                # refuses them, the staged bytes are discarded and no blob is left behind.
                session.flush()
                staged.commit()
                body = {"update_id": stored.id, "task_id": task.id, "job_id": job.id, "round": round_.number,
                        "sha256": ref.sha256, "size": ref.size, "delta_norm": validated.delta_norm,
                        "accepted_updates": round_.num_updates}
    if late:
        state.close_round(round_.id)
        raise ApiError("late", f"round {round_.number} reached its deadline; the result came too late")
    if froze:
        state.close_round(round_.id)
    with db.read() as session:
        body["round_status"] = session.get(Round, round_.id).status
    return body



def _safetensors(tensors) -> bytes:
    from safetensors.numpy import save

    return save({key: tensors[key] for key in sorted(tensors)}, metadata={"format": "pt"})


def _gunzip(data: bytes, limit: int) -> bytes:
    """A gzip-compressed update, decompressed to at most ``limit`` bytes (a larger one is refused
    before it is inflated further: a small body must not expand into gigabytes)."""
    import zlib

    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ApiError("malformed_update", f"the update part says application/gzip but is not gzip data ({exc})") from None
    if len(out) > limit:
        raise ApiError("update_too_large", f"the gzip-compressed update inflates past {limit} bytes, the most a "
                                           "valid update of this job could be")
    if not inflater.eof or inflater.unused_data:
        raise ApiError("malformed_update", "the gzip-compressed update is truncated or has trailing data")
    return out
