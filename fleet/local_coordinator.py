"""Start a coordinator in a child process for a simulation or the demo, and stop it after.

The simulated fleet must talk to the real service over real HTTP, so the coordinator runs as
its own process (``pockettune coordinator``) on a free loopback port, with its database
and blobs in the run's folder; its log goes to ``coordinator.log`` there.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import requests

_LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


class LocalCoordinator:
    """``with LocalCoordinator(workdir) as c: c.base_url, c.admin_token, c.enrollment_key``."""

    def __init__(self, workdir: Path, db_url: str | None = None, artifact_cache: Path | None = None,
                 extra_args: list[str] | None = None, startup_timeout_s: float = 180.0):
        self.workdir = Path(workdir)
        self.instance = self.workdir / "coordinator"
        self.db_url = db_url
        self.artifact_cache = artifact_cache
        self.extra_args = list(extra_args or [])
        self.startup_timeout_s = startup_timeout_s
        self.admin_token = secrets.token_urlsafe(24)
        self.enrollment_key = secrets.token_urlsafe(16)
        self.base_url = ""
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "coordinator.log"
        self._log_start = 0

    def start(self) -> "LocalCoordinator":
        self.instance.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pockettune", "coordinator", "--host", "127.0.0.1", "--port", "0",
                   "--instance", str(self.instance), f"--admin-token={self.admin_token}",
                   f"--enrollment-key={self.enrollment_key}", *self.extra_args]
        if self.db_url:
            command += ["--db", self.db_url]
        if self.artifact_cache:
            command += ["--artifact-cache", str(self.artifact_cache)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # The log is appended to across runs in one folder: only what this process writes counts
        # (an earlier run's "listening on" line names a port nobody listens on any more).
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the coordinator exited with status {self.process.returncode}; "
                                   f"see {self.log_path}:\n{self.log()[-2000:]}")
            found = _LISTENING.search(self.log())
            if found:
                self.base_url = found.group(1)
                try:
                    if requests.get(self.base_url + "/api/v1/health", timeout=5).status_code == 200:
                        return self
                except requests.ConnectionError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the coordinator did not start within {self.startup_timeout_s:.0f} s; see {self.log_path}")

    def log(self) -> str:
        """What this coordinator process wrote to the log (since :meth:`start`)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def __enter__(self) -> "LocalCoordinator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
