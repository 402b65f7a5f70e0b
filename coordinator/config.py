"""Coordinator settings: defaults, then ``POCKETTUNE_*`` environment variables, then arguments.

Nothing is read from a global or a file the operator did not name; ``create_app(config)``
resolves everything once and keeps it on the app. The admin token and the enrollment key,
when neither configured nor in the environment, are generated once and kept in files in the
instance folder (mode 0600), so a restart keeps them and nothing secret is ever printed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

#: setting name -> environment variable
ENVIRONMENT = {
    "DATABASE": "POCKETTUNE_DB",
    "INSTANCE_PATH": "POCKETTUNE_INSTANCE",
    "ADMIN_TOKEN": "POCKETTUNE_ADMIN_TOKEN",
    "ENROLLMENT_KEY": "POCKETTUNE_ENROLLMENT_KEY",
    "ARTIFACT_CACHE": "POCKETTUNE_ARTIFACT_CACHE",
    "SECRET_KEY": "POCKETTUNE_SECRET_KEY",
}

ADMIN_TOKEN_FILE = "admin_token"
ENROLLMENT_KEY_FILE = "enrollment_key"
SECRET_KEY_FILE = "secret_key"
DATABASE_FILE = "coordinator.sqlite3"


@dataclass
class Settings:
    """Everything configurable; field names are the keys ``create_app(config)`` accepts."""

    #: SQLAlchemy URL; default: SQLite file in the instance folder.
    DATABASE: str | None = None
    #: Instance folder: SQLite file, blobs, artifact cache, generated secrets.
    INSTANCE_PATH: str | None = None
    ADMIN_TOKEN: str | None = None
    ENROLLMENT_KEY: str | None = None
    #: Exported artifact directories by (model, tier) key; default <instance>/artifacts.
    ARTIFACT_CACHE: str | None = None
    #: Blob store directory; default <instance>/blobs.
    BLOB_DIR: str | None = None
    #: Largest request body accepted (bytes); bigger requests get 413 before being read.
    MAX_CONTENT_LENGTH: int = 256 * 2**20
    #: Default bound on the L2 norm of an update's change from the round's start adapter.
    MAX_UPDATE_NORM: float = 100.0
    #: A device not heard from for this long is offline.
    OFFLINE_AFTER_S: float = 120.0
    #: What devices are told about how often to heartbeat.
    HEARTBEAT_INTERVAL_S: float = 30.0
    #: How often the background watcher looks for rounds past their deadline.
    TICK_S: float = 1.0
    #: Run the artifact worker and the deadline watcher threads (off only in unit tests).
    BACKGROUND: bool = True
    #: Database connections kept per process (the WSGI server's threads plus the workers).
    DB_POOL_SIZE: int = 12
    #: Signs the dashboard's session cookie (admin login); default: generated in the instance folder.
    SECRET_KEY: str | None = None
    #: Dashboard pages readable without logging in (admin actions always need the login).
    DASHBOARD_PUBLIC: bool = True
    #: How often dashboard pages of a running job refresh themselves (seconds).
    DASHBOARD_POLL_S: float = 3.0
    #: torch threads of the background evaluator (held-out scoring); the rest stay with devices.
    EVALUATION_THREADS: int = 1
    #: score through the frozen prefix (layers below the lowest LoRA layer once per held-out row)
    EVALUATION_FROZEN_PREFIX: bool = True

    @classmethod
    def resolve(cls, config: Mapping | None, default_instance: str) -> "Settings":
        known = {f.name for f in fields(cls)}
        values = {name: os.environ[var] for name, var in ENVIRONMENT.items() if os.environ.get(var)}
        for key, value in (config or {}).items():
            if key not in known:
                raise ValueError(f"unknown coordinator setting {key!r}; known: {', '.join(sorted(known))}")
            if value is not None:
                values[key] = value
        settings = cls(**values)
        instance = Path(settings.INSTANCE_PATH or default_instance).expanduser().absolute()
        settings.INSTANCE_PATH = str(instance)
        settings.DATABASE = settings.DATABASE or f"sqlite:///{instance / DATABASE_FILE}"
        settings.ARTIFACT_CACHE = str(Path(settings.ARTIFACT_CACHE or instance / "artifacts").expanduser().absolute())
        settings.BLOB_DIR = str(Path(settings.BLOB_DIR or instance / "blobs").expanduser().absolute())
        if isinstance(settings.DASHBOARD_PUBLIC, str):
            settings.DASHBOARD_PUBLIC = settings.DASHBOARD_PUBLIC.strip().lower() not in ("0", "false", "no", "off")
        for name in ("MAX_UPDATE_NORM", "OFFLINE_AFTER_S", "HEARTBEAT_INTERVAL_S", "TICK_S", "DASHBOARD_POLL_S"):
            if not float(getattr(settings, name)) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(settings, name)}")
        return settings

    @property
    def instance(self) -> Path:
        return Path(self.INSTANCE_PATH)


def secret_from_file(path: Path) -> str:
    """Read the secret in ``path``, creating it (random, mode 0600) if it does not exist."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path.read_text().strip()
