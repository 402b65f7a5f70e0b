"""The JSON API, versioned under ``/api/v1``: one blueprint per concern.

- ``health.py``  ``GET /health`` (no token)
- ``devices.py`` registration (enrollment key), heartbeat (device), the device list (admin)
- ``jobs.py``    jobs and their global adapters (admin)
- ``tasks.py``   ``tasks/next`` and result uploads (device)
- ``blobs.py``   content-addressed bytes with HTTP Range (device or admin)
- ``generate.py`` proxy-tuned generation with a job's global adapter (admin)
- ``split.py``   split jobs (MergeSFL): admin creates, devices step in lock-step
"""

from __future__ import annotations

from flask import Flask

API_PREFIX = "/api/v1"


def register_blueprints(app: Flask) -> None:
    from coordinator.api import blobs, devices, generate, health, jobs, split, tasks

    for module in (health, devices, jobs, tasks, blobs, generate, split):
        app.register_blueprint(module.bp, url_prefix=API_PREFIX)
