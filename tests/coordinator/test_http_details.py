"""HTTP details of the served coordinator, checked against RFC 9110 over real HTTP.

``GET /api/v1/blobs/<sha256>``: conditional requests (``If-Match``, ``If-None-Match``,
``If-Range``) and byte ranges; and the two request-body caps (Flask's ``--max-upload-mb``,
answered with a JSON 413, and waitress's at twice that, which refuses a bigger body from its
headers alone). Runs once with SQLite and once with PostgreSQL, like the other served tests.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import requests

from coordinator_harness import (MAX_UPLOAD_MB, Api, artifact_cache, assert_error, backend,  # noqa: F401
                                 register, server)


@dataclass
class Blob:
    device: Api
    url: str
    sha256: str
    data: bytes

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    def get(self, **headers) -> requests.Response:
        return self.device.get(self.url, headers={k.replace("_", "-"): v for k, v in headers.items()})

    def head(self, **headers) -> requests.Response:
        return self.device.head(self.url, headers={k.replace("_", "-"): v for k, v in headers.items()})


@pytest.fixture(scope="module")
def blob(server) -> Blob:
    """A device and the artifact's program file it was told to download (as a real device fetches it)."""
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1)
    try:
        _, device = register(server, name="http-details")
        answer = device.get("/api/v1/tasks/next")
        assert answer.status_code == 200, (answer.status_code, answer.text)
        program = next(f for f in answer.json()["artifact"]["files"] if f["path"] == "model.pte")
    finally:
        admin.cancel(job["job_id"])      # the artifact's files stay readable; no job is held across tests
    whole = device.get(program["url"])
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == program["sha256"]
    assert len(whole.content) > 100
    return Blob(device, program["url"], program["sha256"], whole.content)


def assert_whole(response: requests.Response, blob: Blob) -> None:
    """200 with every byte: the Range (if any) was ignored."""
    assert response.status_code == 200, (response.status_code, response.text[:200])
    assert "Content-Range" not in response.headers
    assert response.content == blob.data
    assert response.headers["ETag"] == blob.etag and response.headers["Accept-Ranges"] == "bytes"


def assert_part(response: requests.Response, blob: Blob, first: int, last: int) -> None:
    assert response.status_code == 206, (response.status_code, response.text[:200])
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(blob.data)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.content == blob.data[first:last + 1]
    assert response.headers["ETag"] == blob.etag


def assert_precondition_failed(response: requests.Response, blob: Blob) -> None:
    """412 with the API's JSON error (no body for HEAD): never the blob's bytes, not even part of them."""
    assert response.status_code == 412, (response.status_code, response.text[:200])
    assert blob.data not in response.content and blob.data[:64] not in response.content
    if response.request.method == "HEAD":
        assert response.content == b""
    else:
        assert response.json()["error"]["code"] == "precondition_failed", response.text[:200]
        assert response.headers.get("Content-Length") == str(len(response.content))
    assert "Content-Range" not in response.headers
    assert "max-age" not in response.headers.get("Cache-Control", ""), "a 412 must not be cached"


# --- If-Range --------------------------------------------------------------------------------------

def test_if_range_with_a_weak_etag_is_not_honoured(blob):
    # RFC 9110 13.1.5: If-Range uses the strong comparison; a weak entity tag never matches.
    assert_whole(blob.get(Range="bytes=5-9", If_Range=f'W/{blob.etag}'), blob)
    assert_whole(blob.get(Range="bytes=5-9", If_Range=f'w/{blob.etag}'), blob)


def test_if_range_that_does_not_match_sends_the_whole_blob(blob):
    assert_whole(blob.get(Range="bytes=5-9", If_Range='"' + "0" * 64 + '"'), blob)
    assert_whole(blob.get(Range="bytes=5-9", If_Range=blob.sha256), blob)           # not an entity tag
    assert_whole(blob.get(Range="bytes=5-9", If_Range="Thu, 01 Jan 1998 00:00:00 GMT"), blob)
    assert_whole(blob.get(Range="bytes=5-9", If_Range="not a validator"), blob)


def test_if_range_with_the_strong_etag_or_the_exact_date_gets_the_range(blob):
    assert_part(blob.get(Range="bytes=5-9", If_Range=blob.etag), blob, 5, 9)
    last_modified = blob.get().headers["Last-Modified"]
    assert_part(blob.get(Range="bytes=5-9", If_Range=last_modified), blob, 5, 9)
    # Without a Range, If-Range is ignored.
    assert_whole(blob.get(If_Range=f'W/{blob.etag}'), blob)


# --- If-Match / If-None-Match -------------------------------------------------------------------------

def test_failed_if_match_is_412_without_the_blob(blob):
    for if_match in ('"' + "0" * 64 + '"', f'W/{blob.etag}', blob.sha256, "garbage"):
        assert_precondition_failed(blob.get(If_Match=if_match), blob)
        assert_precondition_failed(blob.get(If_Match=if_match, Range="bytes=0-9"), blob)
        assert_precondition_failed(blob.head(If_Match=if_match), blob)


def test_if_match_that_matches_sends_the_blob(blob):
    for if_match in (blob.etag, "*", f'"{"1" * 64}", {blob.etag}'):
        assert_whole(blob.get(If_Match=if_match), blob)
        assert_part(blob.get(If_Match=if_match, Range="bytes=10-19"), blob, 10, 19)
        head = blob.head(If_Match=if_match)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(blob.data))


def test_if_none_match_is_304_before_any_range(blob):
    for if_none_match in (blob.etag, f'W/{blob.etag}', "*"):
        for response in (blob.get(If_None_Match=if_none_match),
                         blob.get(If_None_Match=if_none_match, Range="bytes=0-9"),
                         blob.head(If_None_Match=if_none_match)):
            assert response.status_code == 304, (if_none_match, response.status_code)
            assert response.content == b"" and response.headers["ETag"] == blob.etag
    assert_whole(blob.get(If_None_Match='"' + "0" * 64 + '"'), blob)


# --- Range --------------------------------------------------------------------------------------------

def test_satisfiable_ranges(blob):
    size = len(blob.data)
    assert_part(blob.get(Range="bytes=0-0"), blob, 0, 0)
    assert_part(blob.get(Range=f"bytes={size - 10}-"), blob, size - 10, size - 1)
    assert_part(blob.get(Range="bytes=-7"), blob, size - 7, size - 1)
    assert_part(blob.get(Range=f"bytes=3-{size * 10}"), blob, 3, size - 1)        # last-pos clipped
    assert_part(blob.get(Range=f"bytes=-{size * 10}"), blob, 0, size - 1)         # suffix longer than the blob
    assert_part(blob.get(Range="BYTES=1-2"), blob, 1, 2)                          # units are case-insensitive


def test_unknown_range_unit_is_ignored(blob):
    assert_whole(blob.get(Range="items=0-5"), blob)
    assert_whole(blob.get(Range="bits=0-5"), blob)


@pytest.mark.parametrize("value", ["bytes=abc", "bytes=5-2", "bytes=", "bytes=-", "bytes=1-2-3", "bytes 0-5",
                                   "bytes=0x1-2", "bytes=+1-2", "bytes=1 -2", "bytes=1-\xb2", "0-5", "=0-5",
                                   "bytes=0-5,abc"])
def test_malformed_range_is_ignored(blob, value):
    assert_whole(blob.get(Range=value), blob)


def test_several_ranges_are_answered_with_the_whole_blob(blob):
    # A multipart/byteranges answer is not offered; the whole representation is (RFC 9110 14.2: MAY ignore).
    assert_whole(blob.get(Range="bytes=0-1,5-6"), blob)
    assert_whole(blob.get(Range="bytes=0-1, -3"), blob)


def test_unsatisfiable_range_is_416_with_the_size(blob):
    size = len(blob.data)
    for value in (f"bytes={size}-", "bytes=999999999-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        response = blob.get(Range=value)
        assert_error(response, 416, "range_not_satisfiable")
        assert response.headers["Content-Range"] == f"bytes */{size}", value
        assert blob.data[:64] not in response.content


def test_head_ignores_range(blob):
    # RFC 9110 14.2: GET is the only method for which range handling is defined.
    head = blob.head(Range="bytes=0-9")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(blob.data))
    assert "Content-Range" not in head.headers and head.headers["ETag"] == blob.etag
    assert blob.head(Range="bytes=999999999-").status_code == 200


# --- request-body caps ---------------------------------------------------------------------------------

LIMIT = int(MAX_UPLOAD_MB * 2**20)


def _raw_post_headers_only(base_url: str, content_length: int) -> bytes:
    """Send only a POST's headers, announcing ``content_length`` bytes, and read what comes back."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(f"POST /api/v1/devices HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n".encode())
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except socket.timeout:
            pytest.fail(f"no answer to {content_length} announced bytes before the body was sent: "
                        f"the server waited to buffer it ({answer[:200]!r})")
        return answer


def test_body_over_the_app_limit_gets_the_json_413(server):
    for size in (LIMIT + 1, 2 * LIMIT):
        too_big = requests.post(server.base_url + "/api/v1/devices", data=b"x" * size,
                                headers={"Content-Type": "application/json"}, timeout=30)
        assert_error(too_big, 413, "payload_too_large")


def test_body_over_twice_the_limit_is_refused_by_waitress_unbuffered(server):
    answer = _raw_post_headers_only(server.base_url, 2 * LIMIT + 1)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b'"payload_too_large"' not in rest, "waitress, not Flask, answers beyond twice the limit"
