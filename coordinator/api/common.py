"""Small helpers the blueprints share: the app's state and strict JSON bodies."""

from __future__ import annotations


from flask import current_app, request

from coordinator import strict_json
from coordinator.fields import unknown_keys
from coordinator.errors import ApiError


def state():
    """The running app's :class:`coordinator.app.CoordinatorState`."""
    return current_app.extensions["pockettune"]


def json_body(*, required: bool = True) -> dict:
    """The request body as a JSON object (400 ``invalid_json`` if it is not one)."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        if required:
            raise ApiError("invalid_json", "the request needs a JSON object body")
        return {}
    try:
        body = strict_json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError("invalid_json", "the body must be a JSON object")
    return body


def refuse_unknown(body: dict, allowed: set[str], what: str) -> None:
    unknown_keys(body, allowed, what)
