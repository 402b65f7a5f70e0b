"""Tasks (device): get the next task, upload its result."""

from __future__ import annotations

from flask import Blueprint, g, request

from coordinator.api.common import state
from coordinator.auth import device_required
from coordinator.errors import ApiError
from coordinator.services.assignment import next_task
from coordinator.services.rejections import record_rejection
from coordinator.services.uploads import accept_result

bp = Blueprint("tasks", __name__)

#: Seconds a device should wait before asking again after a 204.
RETRY_AFTER_S = 10
NO_TASK_HEADER = "PocketTune-No-Task-Reason"


@bp.get("/tasks/next")
@device_required
def get_next_task():
    """200 with a task when the device is selected for an open round; 204 (and why, in a header) if not."""
    payload, reason = next_task(state(), g.device)
    if payload is None:
        return "", 204, {"Retry-After": str(RETRY_AFTER_S), NO_TASK_HEADER: reason}
    return payload


@bp.post("/tasks/<id:task_id>/result")
@device_required
def post_result(task_id: int):
    """Multipart upload: ``meta`` (JSON, a field or a file part) and ``update`` (safetensors file part,
    or gzip-compressed safetensors when the part's type is ``application/gzip``).

    A refusal is answered as usual and logged (``services/rejections.py``) for the dashboard.
    """
    meta, update, gzipped = None, None, False
    if request.mimetype == "multipart/form-data":
        meta_file = request.files.get("meta")
        meta = meta_file.read() if meta_file is not None else request.form.get("meta")
        update_file = request.files.get("update")
        update = update_file.read() if update_file is not None else None
        # an update part of type application/gzip is the safetensors file gzip-compressed
        gzipped = update_file is not None and update_file.mimetype == "application/gzip"
    try:
        return accept_result(state(), g.device, task_id, meta, update, gzipped=gzipped), 201
    except ApiError as error:
        record_rejection(state(), g.device, task_id, error, len(update or b""))
        raise
