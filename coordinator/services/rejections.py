"""The log of refused uploads: who sent what for which task, and why it was refused.

Operators need to see rejections (a device with a broken runtime keeps sending NaNs; a slow
one is always late), but a rejection must not change training: it is written in its own
short transaction *after* the refusal is decided, to a table nothing in training reads.
If writing the log fails, the device still gets its real error; the failure is logged.
"""

from __future__ import annotations

import logging

from coordinator.errors import ApiError
from coordinator.models import Device, Rejection, Task, utcnow
from coordinator.services.state import ServiceState

log = logging.getLogger(__name__)

#: Messages are kept in full up to this length (they name tensors, shapes and bounds).
MAX_MESSAGE_CHARS = 2000


def record_rejection(state: ServiceState, device: Device, task_id: int, error: ApiError, size: int) -> None:
    """Log ``error`` as the answer to ``device``'s upload for ``task_id`` (if that task exists)."""
    try:
        with state.db.write() as session:
            task = session.get(Task, task_id)
            if task is None:
                return
            session.add(Rejection(task_id=task.id, round_id=task.round_id, device_id=device.id, code=error.code,
                                  message=error.message[:MAX_MESSAGE_CHARS], status=error.status, size=size,
                                  received_at=utcnow()))
    except Exception:  # noqa: BLE001 - the device must get its real answer; the log is secondary
        log.exception("could not log the rejection of an upload for task %s", task_id)
