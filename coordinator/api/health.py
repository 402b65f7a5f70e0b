"""``GET /api/v1/health``: is the coordinator up and its database reachable (no token needed)."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import text

from coordinator.api.common import state
from coordinator.errors import ApiError
from coordinator.models import utcnow
from coordinator.services.payloads import iso

bp = Blueprint("health", __name__)
SERVICE = "pockettune-coordinator"


@bp.get("/health")
def health():
    st = state()
    try:
        with st.db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any database failure means "not healthy"
        raise ApiError("unavailable", f"database not reachable: {type(exc).__name__}") from None
    return {"status": "ok", "service": SERVICE, "database": st.db.backend,
            "schema_revision": st.schema_revision, "time": iso(utcnow())}
