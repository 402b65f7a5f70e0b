"""The JSON API, versioned under ``/api/v1``: one blueprint per concern.

- ``health.py``  ``GET /health`` (no token)
- ``devices.py`` registration (enrollment key), heartbeat (device), the device list (admin)
- ``jobs.py``    jobs and their global adapters (admin)
- ``tasks.py``   ``tasks/next`` and result uploads (device)
- ``blobs.py``   content-addressed bytes with HTTP Range (device or admin)
"""

from __future__ import annotations

from flask import Flask

API_PREFIX = "/api/v1"


def register_blueprints(app: Flask) -> None:
    from coordinator.api import blobs, devices, health, jobs, tasks

    for module in (health, devices, jobs, tasks, blobs):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
