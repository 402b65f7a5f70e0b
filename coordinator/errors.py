"""Every error the API returns is ``{"error": {"code": ..., "message": ...}}`` with its 4xx/5xx.

``ERROR_CODES`` is the one list of codes and their HTTP statuses: handlers raise
:class:`ApiError` with a code, never a bare status, and the list is published as
``tests/protocol/error_codes.json`` for clients (a test keeps the two equal). Errors Flask
and Werkzeug raise on their own (unknown URL 404, wrong method 405, body over
``MAX_CONTENT_LENGTH`` 413, unsatisfiable Range 416) get the same JSON shape.

Status choices for a rejected upload: 400 when the request cannot be parsed at all
(multipart without its parts, meta that is not JSON, an update that is not safetensors),
422 when it parses but its content is unacceptable (meta values, tensor names, shapes,
dtypes, non-finite values, norm over the bound), 409 when it conflicts with the round's
state, 413 when it is too large.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

ERROR_CODES: dict[str, int] = {
    # 400: the request cannot be parsed
    "bad_request": 400,
    "invalid_json": 400,
    "missing_part": 400,
    "malformed_update": 400,
    # 401/403/404/405
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    # 409: conflicts with the current state
    "round_closed": 409,
    "late": 409,
    "already_submitted": 409,
    "job_not_running": 409,
    # split jobs (coordinator/split): a step's or an averaging's state
    "not_joined": 403,
    "not_in_step": 403,
    "not_in_averaging": 403,
    "step_closed": 409,
    "step_not_ready": 409,
    "no_such_step": 409,
    "no_such_averaging": 409,
    "dropped": 409,
    "job_full": 409,
    # 412/413/416
    "precondition_failed": 412,
    "payload_too_large": 413,
    "update_too_large": 413,
    "range_not_satisfiable": 416,
    # 422: parses, but the content is not acceptable
    "invalid_field": 422,
    "tensor_names": 422,
    "tensor_shape": 422,
    "tensor_dtype": 422,
    "non_finite": 422,
    "norm_exceeded": 422,
    "bad_features": 422,
    "bad_labels": 422,
    "bad_adapter": 422,
    # 5xx
    "internal_error": 500,
    "unavailable": 503,
}

_CODE_FOR_HTTP_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                         405: "method_not_allowed", 412: "precondition_failed", 413: "payload_too_large",
                         416: "range_not_satisfiable"}


#: Longest error message sent: whatever a message quotes, an answer never echoes a whole input.
MAX_MESSAGE_CHARS = 1000


def cut(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return message if len(message) <= limit else message[:limit] + f"... (message cut, {len(message)} characters)"


class ApiError(Exception):
    """An error answer: ``code`` from :data:`ERROR_CODES`, a message for humans, extra headers."""

    def __init__(self, code: str, message: str, headers: dict | None = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}; add it to coordinator.errors.ERROR_CODES")
        message = cut(message)
        super().__init__(message)
        self.code, self.message, self.status = code, message, ERROR_CODES[code]
        self.headers = headers or {}


def error_response(code: str, message: str, status: int | None = None, headers: dict | None = None):
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status or ERROR_CODES[code]
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """JSON errors for our own exceptions, Werkzeug's HTTP exceptions and anything unexpected."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.code, exc.message, headers=exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = _CODE_FOR_HTTP_STATUS.get(status, "bad_request" if status < 500 else "internal_error")
        # Keep the headers Werkzeug computed (Allow on 405, Content-Range on 416), not its HTML type.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error_response(code, cut(exc.description or exc.name), status=status, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response("internal_error", "internal error; see the coordinator's log")
