"""``create_app(config)``: the coordinator's Flask application factory.

Everything an app needs is built here and kept on the app (``app.extensions["pockettune"]``,
a :class:`CoordinatorState`), never in module globals: tests build as many apps as they
like, each with its own database, blob store and background threads. On creation the app
upgrades its database to the newest Alembic revision, then (unless ``BACKGROUND`` is off)
starts the artifact worker, the evaluation worker and the deadline watcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from coordinator.auth import token_digest
from coordinator.config import ADMIN_TOKEN_FILE, ENROLLMENT_KEY_FILE, SECRET_KEY_FILE, Settings, secret_from_file
from coordinator.db import Database
from coordinator.errors import register_error_handlers
from coordinator.scheduling import DEFAULT_SELECTOR, get_selector
from coordinator.services.adapters import AdapterStore
from coordinator.services.aggregation import RoundAggregator
from coordinator.services.artifact_worker import ArtifactWorker
from coordinator.services.artifacts import ArtifactInfo, load_artifact_info
from coordinator.services.evaluation import EvaluationWorker
from coordinator.services.proxy_generation import ProxyGenerator
from coordinator.services.watcher import DeadlineWatcher
from coordinator.split.jobs import SplitJobs
from coordinator.storage import BlobStore
from coordinator.url_converters import register_converters

log = logging.getLogger(__name__)


class CoordinatorState:
    """The coordinator's parts: settings, database, blob store, services, background threads.

    Services see it as :class:`coordinator.services.state.ServiceState`.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.instance.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.DATABASE, pool_size=settings.DB_POOL_SIZE)
        self.schema_revision = self.db.upgrade_schema()
        self.blobs = BlobStore(Path(settings.BLOB_DIR))
        self.blobs.remove_stale_staging()
        self.adapters = AdapterStore(self.blobs)
        admin_token = settings.ADMIN_TOKEN or secret_from_file(settings.instance / ADMIN_TOKEN_FILE)
        enrollment_key = settings.ENROLLMENT_KEY or secret_from_file(settings.instance / ENROLLMENT_KEY_FILE)
        self.admin_token_digest = token_digest(admin_token)
        self.enrollment_key_digest = token_digest(enrollment_key)
        self.selector = get_selector(DEFAULT_SELECTOR)
        self.aggregator = RoundAggregator(self)
        self.worker = ArtifactWorker(self)
        self.evaluator = EvaluationWorker(self)
        self.watcher = DeadlineWatcher(self.aggregator, settings.TICK_S)
        # Built now but cheap: it loads models on its first request (most coordinators never generate).
        self.proxy_generator = ProxyGenerator(self)
        # Split jobs live in this process's memory (their top trains every step): coordinator/split/jobs.py.
        self.split_jobs = SplitJobs(self.blobs, Path(settings.ARTIFACT_CACHE))
        self._artifacts: dict[int, ArtifactInfo] = {}
        self._artifacts_lock = threading.Lock()

    def start_background(self) -> None:
        self.worker.start()
        self.evaluator.start()
        self.watcher.start()

    def stop_background(self) -> None:
        self.worker.stop()
        self.evaluator.stop()
        self.watcher.stop()

    def close_round(self, round_id: int) -> None:
        """Aggregate a frozen round now; on failure log it and leave it to the deadline watcher."""
        try:
            self.aggregator.close(round_id)
        except Exception:  # noqa: BLE001 - the round stays 'aggregating'; the watcher retries each tick
            log.exception("closing round %s failed; the deadline watcher will retry", round_id)

    def artifact_info(self, artifact_id: int) -> ArtifactInfo:
        """What requests need to know about artifact ``artifact_id``, read once per process."""
        with self._artifacts_lock:
            if artifact_id in self._artifacts:
                return self._artifacts[artifact_id]
        with self.db.read() as session:
            info = load_artifact_info(session, artifact_id)
        with self._artifacts_lock:
            self._artifacts[artifact_id] = info
        return info


def create_app(config: Mapping | None = None) -> Flask:
    """Build a coordinator app; ``config`` keys are :class:`coordinator.config.Settings` fields.

    Settings not given fall back to ``POCKETTUNE_*`` environment variables, then defaults
    (SQLite in the instance folder).
    """
    app = Flask("coordinator")
    settings = Settings.resolve(config, default_instance=app.instance_path)
    app.instance_path = settings.INSTANCE_PATH
    app.config.update(MAX_CONTENT_LENGTH=int(settings.MAX_CONTENT_LENGTH),
                      SECRET_KEY=settings.SECRET_KEY or secret_from_file(settings.instance / SECRET_KEY_FILE),
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    state = CoordinatorState(settings)
    app.extensions["pockettune"] = state

    register_error_handlers(app)
    register_converters(app)
    from coordinator.api import register_blueprints

    register_blueprints(app)
    from coordinator.dashboard import register_dashboard

    register_dashboard(app)
    if settings.BACKGROUND:
        state.start_background()
    log.info("coordinator ready: database %s (schema %s), instance %s", state.db.display_url,
             state.schema_revision, settings.INSTANCE_PATH)
    return app
