"""``GET /api/v1/blobs/<sha256>``: content-addressed bytes, with HTTP Range for resumable downloads.

Werkzeug's conditional responses do the Range work: ``Range: bytes=a-b`` gets 206 with
``Content-Range``, an unsatisfiable range 416, ``If-Range``/``If-None-Match`` use the sha256
as the ETag (a blob never changes, so the ETag is strong and the response is cacheable
forever). Devices may fetch artifact files and global adapters only; uploaded updates are
readable by the admin alone (a device's update can leak its training data), and for a
device a blob it may not read is indistinguishable from one that does not exist (404).
"""

from __future__ import annotations

from flask import Blueprint, g, send_file
from sqlalchemy import or_, select

from coordinator.api.common import state
from coordinator.auth import device_or_admin_required
from coordinator.errors import ApiError
from coordinator.models import Artifact, ArtifactFile, GlobalAdapter, Task
from coordinator.storage import is_sha256_hex

bp = Blueprint("blobs", __name__)


def _device_may_read(session, sha256: str) -> bool:
    checks = (
        select(ArtifactFile.id).where(ArtifactFile.sha256 == sha256, ArtifactFile.device.is_(True)),
        select(Artifact.id).where(Artifact.manifest_sha256 == sha256),
        select(GlobalAdapter.id).where(or_(GlobalAdapter.ptd_sha256 == sha256,
                                           GlobalAdapter.weights_sha256 == sha256,
                                           GlobalAdapter.config_sha256 == sha256)),
        # a global adapter cut to a device's tier (heterogeneous jobs)
        select(Task.id).where(Task.start_ptd_sha256 == sha256),
    )
    return any(session.execute(check.limit(1)).first() is not None for check in checks)


@bp.get("/blobs/<sha256>")
@device_or_admin_required
def get_blob(sha256: str):
    st = state()
    not_found = ApiError("not_found", f"no blob {sha256}")
    if not is_sha256_hex(sha256):
        raise not_found
    if not g.is_admin:
        with st.db.read() as session:
            if not _device_may_read(session, sha256):
                raise not_found
    path = st.blobs.path(sha256)
    if not path.is_file():
        raise not_found
    response = send_file(path, mimetype="application/octet-stream", conditional=True, etag=sha256,
                         download_name=sha256, max_age=365 * 24 * 3600)
    response.headers["Accept-Ranges"] = "bytes"
    response.cache_control.private = True
    response.cache_control.public = False
    response.cache_control.immutable = True
    return response
