"""Helpers for the fleet tests: a private served coordinator and the device command line.

Each test that kills, restarts or tampers with a coordinator gets its own (SQLite, fresh
instance folder) rather than the session's shared one; all of them reuse the session's
tiny export through the seeded artifact cache, so no test waits for an export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "coordinator"))

from coordinator_harness import (ENROLLMENT_KEY, REPO, ServedCoordinator,  # noqa: E402
                                 new_database, seeded_artifact_cache)


def private_server(tmp_path: Path, artifact_cache: Path, extra_args=None) -> ServedCoordinator:
    database = new_database("sqlite", tmp_path)
    return ServedCoordinator(database, tmp_path / "instance", artifact_cache, list(extra_args or [])).start()


def device_command(server: ServedCoordinator, state_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pockettune", "device", "--coordinator", server.base_url,
            "--enroll", ENROLLMENT_KEY, "--state-dir", str(state_dir), *extra]


def start_device(server: ServedCoordinator, state_dir: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "wb")
    return subprocess.Popen(device_command(server, state_dir, *extra), stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)


__all__ = ["private_server", "device_command", "start_device", "seeded_artifact_cache", "ENROLLMENT_KEY"]
