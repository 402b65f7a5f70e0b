"""HTTP between a device and the coordinator: retries, resumable verified downloads, throttling.

Phones lose their connection and coordinators restart, so every call here retries
transient failures (connection refused or reset, timeouts, 5xx) with capped exponential
backoff and jitter, for as long as the caller's ``give_up_after`` allows; a 4xx is the
coordinator's considered answer and is raised at once as a :class:`ProtocolError`.

Downloads go to ``<dest>.part`` and resume with ``Range`` (guarded by ``If-Range`` on the
blob's sha256, its ETag); the finished file is hashed and must match the sha256 the task
named, else it is deleted and :class:`IntegrityError` raised: a device never trains on
bytes it did not ask for. A :class:`Throttle` caps the transfer rate to a profile's
bandwidth when a simulated device emulates its link in real time.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import requests

from export.manifest import sha256_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ProtocolError(Exception):
    """The coordinator answered with an error (``status``, ``code`` from its error body)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class IntegrityError(Exception):
    """A downloaded file's sha256 is not the one the coordinator promised."""


class CoordinatorUnavailable(Exception):
    """The coordinator could not be reached for longer than the caller allowed."""


@dataclass
class RetryPolicy:
    """Capped exponential backoff: first wait ``initial_s``, doubling up to ``max_s``, +-25% jitter."""

    initial_s: float = 0.5
    max_s: float = 10.0
    give_up_after_s: float | None = None   # None: keep trying (a device daemon)

    def waits(self, rng: random.Random):
        wait = self.initial_s
        while True:
            yield wait * rng.uniform(0.75, 1.25)
            wait = min(wait * 2, self.max_s)


@dataclass
class Throttle:
    """Caps a link at ``bytes_per_second`` in real time (None: uncapped); counts what it moved."""

    bytes_per_second: float | None = None

    def pace(self, nbytes: int, started: float, sent_before: int) -> None:
        """Sleep so that ``sent_before + nbytes`` bytes since ``started`` stay under the cap."""
        if not self.bytes_per_second:
            return
        due = started + (sent_before + nbytes) / self.bytes_per_second
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


@dataclass
class TransferLog:
    """Bytes and seconds moved in each direction (what the device reports with its result)."""

    bytes_down: int = 0
    seconds_down: float = 0.0
    bytes_up: int = 0
    seconds_up: float = 0.0
    files_fetched: list[str] = field(default_factory=list)


def _error_from(response: requests.Response) -> ProtocolError:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return ProtocolError(response.status_code, "http_error", response.text[:200])
    return ProtocolError(response.status_code, str(error.get("code", "unknown")), str(error.get("message", "")))


class CoordinatorClient:
    """The device side of PocketTune's API (``/api/v1``) over ``requests``."""

    def __init__(self, base_url: str, token: str | None = None, retry: RetryPolicy | None = None,
                 throttle: Throttle | None = None, timeout_s: float = 60.0, seed: int | None = None):
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token
        self.retry = retry or RetryPolicy()
        self.throttle = throttle or Throttle()
        self.timeout_s = timeout_s
        self.transfers = TransferLog()
        self._rng = random.Random(seed)
        self._session = requests.Session()

    def url(self, path: str) -> str:
        """Answers carry paths relative to the coordinator's base URL; join them here."""
        return urljoin(self.base_url, path.lstrip("/"))

    # --- one request, retried --------------------------------------------------------------

    def request(self, method: str, path: str, *, ok=(200, 201, 202, 204, 206), **kwargs) -> requests.Response:
        """Send a request, retrying transient failures; raise ProtocolError on a 4xx (or a 5xx
        once retries run out) and CoordinatorUnavailable if it stays unreachable."""
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.token:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        started, waits = time.monotonic(), self.retry.waits(self._rng)
        while True:
            try:
                response = self._session.request(method, self.url(path), headers=headers,
                                                 timeout=self.timeout_s, **kwargs)
                if response.status_code in ok:
                    return response
                if response.status_code < 500:
                    raise _error_from(response)
                failure: Exception = _error_from(response)
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure = exc
            wait = next(waits)
            if self.retry.give_up_after_s is not None and time.monotonic() - started + wait > self.retry.give_up_after_s:
                if isinstance(failure, ProtocolError):
                    raise failure
                raise CoordinatorUnavailable(f"{method} {path}: {failure}") from failure
            log.info("%s %s failed (%s); retrying in %.1f s", method, path, failure, wait)
            time.sleep(wait)

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        return self.request(method, path, json=body).json()

    # --- protocol calls --------------------------------------------------------------------

    def register(self, enrollment_key: str, name: str, platform: str, capabilities: dict,
                 battery: float | None = None, charging: bool | None = None) -> dict:
        body = {"enrollment_key": enrollment_key, "name": name, "platform": platform,
                "capabilities": capabilities, "battery": battery, "charging": charging}
        return self.json("POST", "api/v1/devices", {k: v for k, v in body.items() if v is not None})

    def heartbeat(self, **fields) -> dict:
        return self.json("POST", "api/v1/devices/heartbeat", {k: v for k, v in fields.items() if v is not None})

    def next_task(self) -> tuple[dict | None, str, float]:
        """(task, "", 0) or (None, the coordinator's reason, seconds it suggests waiting)."""
        response = self.request("GET", "api/v1/tasks/next")
        if response.status_code == 204:
            retry_after = float(response.headers.get("Retry-After", 5))
            return None, response.headers.get("PocketTune-No-Task-Reason", ""), retry_after
        return response.json(), "", 0.0

    def upload_result(self, upload_url: str, meta: dict, update: bytes, *, gzipped: bool = False) -> dict:
        """POST the result (``gzipped``: ``update`` is the gzip-compressed safetensors file); a 409
        ``already_submitted`` after a lost answer counts as accepted."""
        started = time.perf_counter()
        if self.throttle.bytes_per_second:
            self.throttle.pace(len(update), started, 0)
        try:
            response = self.request("POST", upload_url, files={
                "meta": (None, json.dumps(meta), "application/json"),
                "update": ("update.safetensors.gz", update, "application/gzip") if gzipped
                else ("update.safetensors", update, "application/octet-stream")})
            answer = response.json()
        except ProtocolError as exc:
            if exc.code != "already_submitted":
                raise
            answer = {"already_submitted": True}
        self.transfers.bytes_up += len(update)
        self.transfers.seconds_up += time.perf_counter() - started
        return answer

    def download(self, url: str, sha256: str, dest: Path) -> int:
        """Fetch ``url`` into ``dest`` unless a verified copy is there; returns bytes transferred."""
        dest = Path(dest)
        if dest.is_file():
            return 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        started, fetched = time.perf_counter(), 0
        digest_ok = False
        while not digest_ok:
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{sha256}"'} if have else {}
            response = self.request("GET", url, headers=headers, stream=True, ok=(200, 206, 416))
            if response.status_code == 416:          # our partial file is already whole (or bogus)
                response.close()
            else:
                mode = "ab" if response.status_code == 206 else "wb"   # 200: the server restarted us
                with open(part, mode) as f:
                    try:
                        for chunk in response.iter_content(_CHUNK):
                            self.throttle.pace(len(chunk), started, fetched)
                            f.write(chunk)
                            fetched += len(chunk)
                    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                        log.info("download of %s interrupted (%s); resuming", url, exc)
                        continue
            digest_ok = sha256_file(part) == sha256
            if not digest_ok:
                part.unlink(missing_ok=True)
                raise IntegrityError(f"{url}: downloaded bytes do not have the sha256 {sha256} the task named; "
                                     "refusing to use them")
        os.replace(part, dest)
        self.transfers.bytes_down += fetched
        self.transfers.seconds_down += time.perf_counter() - started
        self.transfers.files_fetched.append(url)
        return fetched

