"""``ServiceState``: what a service may use of the running coordinator, as a type.

Services take the app's state as their first argument instead of reaching for globals, so a
test can build as many coordinators as it likes. :class:`coordinator.app.CoordinatorState` is
the one implementation; this Protocol names the parts services use, so that a reader (and a
type checker) sees them without opening ``app.py``, and ``services/`` need not import the app.
The background workers appear only through the calls services make to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from coordinator.config import Settings
from coordinator.db import Database
from coordinator.models import Artifact
from coordinator.scheduling import Selector
from coordinator.services.adapters import AdapterStore
from coordinator.services.artifacts import ArtifactCache, ArtifactInfo
from coordinator.storage import BlobStore


class ArtifactOrders(Protocol):
    """The artifact worker, as services see it: queue a job's preparation or a tier's export."""

    cache: ArtifactCache

    def submit(self, job_id: int) -> None: ...

    def request_tier(self, model: str, tier_dict: dict, artifact_format: str = ...) -> None: ...


class EvaluationQueue(Protocol):
    """The evaluation worker, as services see it: queue a global adapter's scoring."""

    def submit(self, job_id: int, round_number: int) -> None: ...

    def artifact_directory(self, artifact: Artifact) -> Path: ...


class PromptGenerator(Protocol):
    """Proxy-tuned generation, as the JSON API and the dashboard call it."""

    def generate(self, job_id: int, request) -> dict: ...


class ServiceState(Protocol):
    """The coordinator's parts a service function may use."""

    settings: Settings
    db: Database
    blobs: BlobStore
    adapters: AdapterStore
    selector: Selector
    worker: ArtifactOrders
    evaluator: EvaluationQueue
    proxy_generator: PromptGenerator

    def artifact_info(self, artifact_id: int) -> ArtifactInfo:
        """What requests need to know about an artifact (cached per process)."""
        ...

    def close_round(self, round_id: int) -> None:
        """Aggregate a frozen round now (on failure the deadline watcher retries)."""
        ...
