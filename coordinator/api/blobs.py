"""``GET /api/v1/blobs/<sha256>``: content-addressed bytes, with HTTP Range for resumable downloads.

Devices may fetch artifact files and global adapters only; uploaded updates are readable by
the admin alone (a device's update can leak its training data), and for a device a blob it may
not read is indistinguishable from one that does not exist (404).

Conditional and range requests follow RFC 9110 (sections 13 and 14), evaluated here rather
than by Werkzeug's ``make_conditional`` (which honours a weak ``If-Range``, answers 412 with the
whole file, and 416 for a Range it cannot parse). A blob never changes, so its ETag is the
strong ``"<sha256>"`` and the response is cacheable forever. In RFC 9110 13.2.2's order, once
the blob is known to exist and be readable:

1. ``If-Match``: unless ``*`` or a strong tag equal to ``"<sha256>"`` is listed (a weak tag never
   matches; a field that does not parse matches nothing), 412 with an empty body, for GET and
   HEAD alike. Without ``If-Match``, an ``If-Unmodified-Since`` date before ``Last-Modified``
   is 412 too.
2. ``If-None-Match``: ``*`` or the tag, weak or strong, is 304 (no body); without it, an
   ``If-Modified-Since`` at or after ``Last-Modified`` is 304.
3. ``Range``, for GET only (HEAD ignores it: GET is the only method with range handling):

   - ignored (200, the whole blob) when ``If-Range`` is present and is not exactly the strong
     ``"<sha256>"`` or exactly the ``Last-Modified`` date (a weak tag, another tag, another
     date or anything else: the client's partial copy may be of something else);
   - ignored when its unit is not ``bytes`` or it does not parse as a ``range-set`` (``bytes=abc``,
     ``bytes=5-2``, a stray ``,abc``): RFC 9110 14.2 says to ignore an unknown unit and lets a
     server ignore an invalid one;
   - ignored when it names more than one range (no ``multipart/byteranges``; the whole blob is
     one answer a resuming client can use), and for an empty blob;
   - otherwise one range: 206 with ``Content-Range: bytes first-last/size`` (``last`` clipped to
     the blob; a suffix ``-n`` longer than the blob is all of it), or 416
     ``range_not_satisfiable`` with ``Content-Range: bytes */size`` when ``first`` is past the end
     or the suffix is ``-0``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

from flask import Blueprint, Response, g, request, send_file
from sqlalchemy import or_, select
from werkzeug.http import parse_date

from coordinator.api.common import state
from coordinator.auth import device_or_admin_required
from coordinator.errors import ApiError, error_response
from coordinator.models import Artifact, ArtifactFile, GlobalAdapter, Task
from coordinator.storage import is_sha256_hex

bp = Blueprint("blobs", __name__)

_MAX_AGE_S = 365 * 24 * 3600
_CHUNK = 256 * 1024
_MIME = "application/octet-stream"


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


# --- header parsing (RFC 9110) ----------------------------------------------------------------------

#: One element of an entity-tag list: optional ``W/``, a quoted opaque tag (etagc: %x21 / %x23-7E /
#: obs-text), then a comma or the end; an element may be empty (``#rule`` lists allow that).
_TAG_ELEMENT = re.compile(r'[ \t]*(?:(W/)?"([\x21\x23-\x7e\x80-\xff]*)")?[ \t]*(,|\Z)')
_ANY = "*"


def _entity_tags(value: str):
    """``If-Match``/``If-None-Match``: ``_ANY``, a list of ``(weak, opaque)``, or None if malformed."""
    value = value.strip(" \t")
    if value == "*":
        return _ANY
    tags, pos = [], 0
    while pos < len(value):
        found = _TAG_ELEMENT.match(value, pos)
        if found is None or found.end() == pos:
            return None
        if found.group(2) is not None:
            tags.append((found.group(1) is not None, found.group(2)))
        pos = found.end()
    return tags


def _http_date(value: str | None) -> datetime | None:
    return parse_date(value.strip(" \t")) if value else None


_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")


def _byte_ranges(value: str) -> list[tuple[int | None, int | None]] | None:
    """A ``Range`` field's byte ranges as ``(first, last)`` / ``(None, suffix_length)``, or None to
    ignore it: a unit other than ``bytes`` (case-insensitive), or any range-spec that does not parse
    (digits only, no inner spaces, ``last >= first``), or no range-spec at all."""
    unit, equals, range_set = value.strip(" \t").partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    ranges = []
    for element in range_set.split(","):
        element = element.strip(" \t")
        if not element:
            continue                               # empty list elements are allowed
        if found := _INT_RANGE.fullmatch(element):
            first, last = int(found.group(1)), int(found.group(2)) if found.group(2) else None
            if last is not None and last < first:
                return None
            ranges.append((first, last))
        elif found := _SUFFIX_RANGE.fullmatch(element):
            ranges.append((None, int(found.group(1))))
        else:
            return None
    return ranges or None


# --- the answer -----------------------------------------------------------------------------------

def _validators(response: Response, sha256: str, last_modified: datetime, cacheable: bool = True) -> Response:
    response.set_etag(sha256)
    response.last_modified = last_modified
    if cacheable:
        response.cache_control.private = True
        response.cache_control.max_age = _MAX_AGE_S
        response.cache_control.immutable = True
    return response


def _precondition_failed(sha256: str, last_modified: datetime) -> Response:
    """412 with the API's JSON error, never the blob's bytes, and not cached (it answers a
    condition, not the blob); HEAD drops the body as for any answer."""
    response = error_response("precondition_failed", "the blob does not match If-Match / If-Unmodified-Since: "
                                                     "it is not the version the client has")
    response.cache_control.no_store = True
    return _validators(response, sha256, last_modified, cacheable=False)


def _not_modified(sha256: str, last_modified: datetime) -> Response:
    response = Response(status=304)
    del response.headers["Content-Type"]
    return _validators(response, sha256, last_modified)


def _whole(path: Path, sha256: str, last_modified: datetime) -> Response:
    response = send_file(path, mimetype=_MIME, conditional=False, etag=False, download_name=sha256,
                         max_age=_MAX_AGE_S, last_modified=last_modified)
    response.cache_control.public = False
    response.headers["Accept-Ranges"] = "bytes"
    return _validators(response, sha256, last_modified)


def _part(path: Path, sha256: str, last_modified: datetime, first: int, last: int, size: int) -> Response:
    file = open(path, "rb")                        # noqa: SIM115 - closed by the response
    file.seek(first)

    def chunks(remaining: int = last - first + 1):
        while remaining > 0:
            chunk = file.read(min(_CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    response = Response(chunks(), status=206, mimetype=_MIME, direct_passthrough=True)
    response.call_on_close(file.close)
    response.content_length = last - first + 1
    response.headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    response.headers["Accept-Ranges"] = "bytes"
    return _validators(response, sha256, last_modified)


def _if_range_matches(value: str, sha256: str, last_modified: datetime) -> bool:
    value = value.strip(" \t")
    if value.startswith('"'):
        return value == f'"{sha256}"'              # strong comparison; W/"..." never gets here
    if value.startswith(("W/", "w/")):
        return False
    date = _http_date(value)
    return date is not None and date == last_modified


@bp.get("/blobs/<sha256>")
@device_or_admin_required
def get_blob(sha256: str):
    st = state()
    not_found = ApiError("not_found", f"no blob {sha256}")
    if not is_sha256_hex(sha256):
        raise not_found
    if not g.is_admin and not st.split_jobs.publishes(sha256):
        with st.db.read() as session:
            if not _device_may_read(session, sha256):
                raise not_found
    path = st.blobs.path(sha256)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise not_found from None
    size = stat.st_size
    last_modified = datetime.fromtimestamp(int(stat.st_mtime), timezone.utc)
    headers = request.headers

    # 1. If-Match (strong comparison), else If-Unmodified-Since.
    if_match = headers.get("If-Match", "").strip(" \t")
    if if_match:
        tags = _entity_tags(if_match)
        if not (tags == _ANY or (tags and any(not weak and tag == sha256 for weak, tag in tags))):
            return _precondition_failed(sha256, last_modified)
    else:
        unmodified_since = _http_date(headers.get("If-Unmodified-Since"))
        if unmodified_since is not None and last_modified > unmodified_since:
            return _precondition_failed(sha256, last_modified)

    # 2. If-None-Match (weak comparison), else If-Modified-Since.
    if_none_match = headers.get("If-None-Match", "").strip(" \t")
    if if_none_match:
        tags = _entity_tags(if_none_match)
        if tags == _ANY or (tags and any(tag == sha256 for _, tag in tags)):
            return _not_modified(sha256, last_modified)
    else:
        modified_since = _http_date(headers.get("If-Modified-Since"))
        if modified_since is not None and last_modified <= modified_since:
            return _not_modified(sha256, last_modified)

    # 3. Range: GET only, guarded by If-Range, one byte range.
    range_value = headers.get("Range")
    if request.method != "GET" or range_value is None or size == 0:
        return _whole(path, sha256, last_modified)
    if_range = headers.get("If-Range")
    if if_range is not None and not _if_range_matches(if_range, sha256, last_modified):
        return _whole(path, sha256, last_modified)
    ranges = _byte_ranges(range_value)
    if ranges is None or len(ranges) != 1:
        return _whole(path, sha256, last_modified)
    [(first, last)] = ranges
    if first is None:                              # a suffix: the last `last` bytes; -0 is none
        first, last = (max(size - last, 0), size - 1) if last > 0 else (size, size - 1)
    else:
        last = size - 1 if last is None else min(last, size - 1)
    if first >= size:
        raise ApiError("range_not_satisfiable", f"range {range_value!r} is not within the blob's {size} bytes",
                       headers={"Content-Range": f"bytes */{size}"})
    return _part(path, sha256, last_modified, first, last, size)
