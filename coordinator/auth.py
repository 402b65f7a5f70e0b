"""Bearer tokens: one per device (issued at registration), one admin token (from configuration).

A device token is 256 random bits (``secrets``), shown once, and stored only as its sha256:
a leaked database does not let anyone act as a device. Lookup goes by that digest and the
stored digest is compared again with ``hmac.compare_digest``; since only digests are ever
compared, response timing tells an attacker nothing about the token itself. The admin token
is compared the same way (digest against digest, constant time).

Missing or unknown token: 401 with ``WWW-Authenticate: Bearer``. A valid token that is not
allowed here (a device on an admin endpoint, or on another device's task), or the token of a
device an admin disabled (``POST /api/v1/devices/<id>/disable``): 403.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from flask import current_app, g, request
from sqlalchemy import select

from coordinator.errors import ApiError
from coordinator.models import Device

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pockettune"'}


def new_token() -> str:
    """A fresh random bearer token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def secret_matches(given: str | None, expected_digest: str | None) -> bool:
    """Constant-time check of a presented secret against the digest of the expected one."""
    if not given or not expected_digest:
        return False
    return hmac.compare_digest(token_digest(given), expected_digest)


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str) -> ApiError:
    return ApiError("unauthorized", message, headers=_CHALLENGE)


def _is_admin(token: str) -> bool:
    return secret_matches(token, current_app.extensions["pockettune"].admin_token_digest)


def _device_for(token: str) -> Device | None:
    digest = token_digest(token)
    with current_app.extensions["pockettune"].db.read() as session:
        device = session.execute(select(Device).where(Device.token_sha256 == digest)).scalar_one_or_none()
    if device is None or not hmac.compare_digest(device.token_sha256, digest):
        return None
    return device


def authenticate(*, device: bool, admin: bool) -> None:
    """Set ``g.device`` / ``g.is_admin`` from the bearer token, or raise 401/403."""
    token = _bearer_token()
    if token is None:
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    g.is_admin, g.device = False, None
    if _is_admin(token):
        if admin:
            g.is_admin = True
            return
        raise ApiError("forbidden", "this endpoint is for devices; the admin token cannot act as one")
    found = _device_for(token)
    if found is None:
        raise _unauthorized("invalid bearer token")
    if not device:
        raise ApiError("forbidden", "this endpoint needs the admin token")
    if found.disabled_at is not None:
        raise ApiError("forbidden", "this device was disabled by the coordinator's operator; its token is no "
                                    "longer accepted (ask the operator to enable it again)")
    g.device = found


def _requiring(*, device: bool, admin: bool):
    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            authenticate(device=device, admin=admin)
            return view(*args, **kwargs)
        return wrapped
    return decorator


#: The view needs a device token; ``g.device`` is that device (detached, read at request start).
device_required = _requiring(device=True, admin=False)
#: The view needs the admin token.
admin_required = _requiring(device=False, admin=True)
#: Either: ``g.is_admin`` or ``g.device`` says which.
device_or_admin_required = _requiring(device=True, admin=True)
