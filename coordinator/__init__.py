"""The PocketTune coordinator: ``create_app(config)`` builds the Flask app (see ``coordinator/README.md``).

Kept import-light (``pockettune --help`` imports the command line through this package);
``create_app`` is loaded on first use.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from coordinator.app import create_app

        return create_app
    raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
