"""``ArtifactWorker``: the background thread that builds artifacts and prepares jobs with them.

An export of SmolLM2 takes minutes, so it never happens inside a request. The worker takes
two kinds of work from one queue:

- **a job to prepare**: its own artifact (from the export cache or exported now, then stored
  as blobs and recorded, ``services/artifacts.py``), for ``prepare_tiers: "all"`` every other
  tier its configurator may hand out, then :func:`~coordinator.services.lifecycle.start_job`
  (round 0's adapter, round 1 open), or
  :func:`~coordinator.services.lifecycle.fail_preparation` with the error. Jobs still
  ``preparing`` when the coordinator starts are queued again.
- **a device's tier** (:meth:`ArtifactWorker.request_tier`): the artifact of a tier the job's
  configurator handed out (``services/tiers.py``), in the format the device runs, ordered
  the first time a device is given it. A failed tier export is logged and retried on a later
  request.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from coordinator.models import Artifact, ArtifactFile, Job, JobStatus, utcnow
from coordinator.services import lifecycle
from coordinator.services.artifacts import (ADAPTER_PTD, INITIAL_ADAPTER_CONFIG, INITIAL_ADAPTER_WEIGHTS, MANIFEST_FILE,
                                            ArtifactCache, artifact_key)
from coordinator.services.heavy_imports import ensure_heavy_imports
from coordinator.services.state import ServiceState
from coordinator.services.tiers import job_view
from coordinator.storage import BlobRef
from export.formats import DEFAULT_FORMAT

log = logging.getLogger(__name__)


def _warm_up() -> None:
    """Load torch and ExecuTorch ahead of the first export, evaluation or job validation (publishing
    an adapter needs neither: ``services/adapters.py`` writes it with ``models.adapter_codec``)."""
    try:
        ensure_heavy_imports()
    except Exception:  # noqa: BLE001 - a failed warm-up only costs time later
        log.exception("warming up imports failed")


class ArtifactWorker:
    """The background thread that prepares jobs (artifact, then the life cycle's start) and exports tiers."""

    def __init__(self, state: ServiceState):
        self.state = state
        self.cache = ArtifactCache(Path(state.settings.ARTIFACT_CACHE))
        self._queue: queue.Queue[int | tuple[str, dict] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._requested: set[str] = set()
        self._requested_lock = threading.Lock()

    def start(self) -> None:
        with self.state.db.read() as session:
            pending = session.scalars(select(Job.id).where(Job.status == JobStatus.PREPARING).order_by(Job.id)).all()
        for job_id in pending:
            self._queue.put(job_id)
        self._thread = threading.Thread(target=self._run, name="pockettune-artifacts", daemon=True)
        self._thread.start()
        # The first aggregation and the first export need torch and ExecuTorch's serializer
        # (~10 s of imports): load them in the background now rather than inside a request.
        threading.Thread(target=_warm_up, name="pockettune-warm-up", daemon=True).start()

    def submit(self, job_id: int) -> None:
        self._queue.put(job_id)

    def request_tier(self, model: str, tier_dict: dict, artifact_format: str = DEFAULT_FORMAT) -> None:
        """Queue the export of (model, tier, format) unless it is queued already (returns at once)."""
        key = artifact_key(model, tier_dict, artifact_format)
        with self._requested_lock:
            if key in self._requested:
                return
            self._requested.add(key)
        log.info("artifact %s: %s export requested for a device's tier", key[:12], artifact_format)
        self._queue.put((model, tier_dict, artifact_format))

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, tuple):
                self._build_tier(*item)
                continue
            try:
                self.prepare(item)
            except Exception:  # noqa: BLE001 - prepare records failures itself; never kill the worker
                log.exception("preparing job %s failed unexpectedly", item)

    def _build_tier(self, model: str, tier_dict: dict, artifact_format: str) -> None:
        key = artifact_key(model, tier_dict, artifact_format)
        try:
            self._artifact_for(model, tier_dict, artifact_format)
        except Exception:  # noqa: BLE001 - a device's tier failing must not stop other work
            log.exception("artifact %s: exporting a device tier failed", key[:12])
        finally:
            with self._requested_lock:
                self._requested.discard(key)

    def prepare(self, job_id: int) -> None:
        """Make job ``job_id`` runnable, or mark it failed with the reason."""
        db = self.state.db
        with db.read() as session:
            job = session.get(Job, job_id)
            if job is None or job.status != JobStatus.PREPARING:
                return
            model, tier_dict = job.model, job.tier
        try:
            artifact_id = self._artifact_for(model, tier_dict)
            self._prepare_tiers(job_id, artifact_id)
            self._start_job(job_id, artifact_id)
        except Exception as exc:  # noqa: BLE001 - any failure is the job's, reported through the API
            log.exception("job %s: preparing the artifact failed", job_id)
            lifecycle.fail_preparation(self.state, job_id, f"{type(exc).__name__}: {exc}")

    def _prepare_tiers(self, job_id: int, artifact_id: int) -> None:
        """For ``prepare_tiers: "all"``: export every tier the job's configurator may hand out."""
        from coordinator.scheduling.configurator import configurator_class, get_configurator

        with self.state.db.read() as session:
            job = session.get(Job, job_id)
            if (job is None or job.prepare_tiers != "all"
                    or configurator_class(job.configurator).always_reference_tier):
                return
            view = job_view(self.state, session, job, 1, reference_artifact_id=artifact_id)
        tiers = get_configurator(job.configurator, job.configurator_options).preparable_tiers(view)
        for number, tier in enumerate(tiers, 1):
            log.info("job %s: preparing tier %d of %d", job_id, number, len(tiers))
            self._artifact_for(job.model, tier)

    def _artifact_for(self, model: str, tier_dict: dict, artifact_format: str = DEFAULT_FORMAT) -> int:
        key = artifact_key(model, tier_dict, artifact_format)
        with self.state.db.read() as session:
            artifact = session.scalars(select(Artifact).where(Artifact.key == key)).one_or_none()
            if artifact is not None:
                files = session.scalars(select(ArtifactFile).where(ArtifactFile.artifact_id == artifact.id)).all()
                if all(self.state.blobs.exists(f.sha256) for f in files) and self.state.blobs.exists(
                        artifact.manifest_sha256):
                    return artifact.id
                log.warning("artifact %s: blobs missing; importing it again", key[:12])
        return self.import_directory(key, model, self.cache.ensure(model, tier_dict, artifact_format,
                                                                   adapter_tensors=self.state.adapters.tensors))

    def import_directory(self, key: str, model: str, directory: Path) -> int:
        """Store every file of an exported artifact as a blob and record it; returns its id."""
        from export.manifest import read_manifest

        manifest = read_manifest(directory)
        bad = manifest.verify_files(directory)
        if bad:
            raise ValueError(f"artifact {directory} does not match its manifest: {', '.join(bad)}")
        blobs = self.state.blobs
        for rel, meta in manifest.files.items():
            ref = blobs.put_file(directory / rel)
            if ref.sha256 != meta["sha256"]:
                raise ValueError(f"artifact file {rel} changed while being stored")
        manifest_ref = blobs.put_file(directory / MANIFEST_FILE)
        db = self.state.db
        try:
            with db.write() as session:
                existing = session.scalars(select(Artifact).where(Artifact.key == key)).one_or_none()
                if existing is not None:
                    return existing.id
                artifact = Artifact(key=key, model=model, format=manifest.data.get("format", DEFAULT_FORMAT),
                                    manifest=manifest.data, manifest_sha256=manifest_ref.sha256,
                                    manifest_size=manifest_ref.size, created_at=utcnow())
                session.add(artifact)
                session.flush()
                for rel, meta in manifest.files.items():
                    session.add(ArtifactFile(artifact_id=artifact.id, path=rel, sha256=meta["sha256"],
                                             size=meta["size"], device=bool(meta["device"])))
                session.flush()
                return artifact.id
        except IntegrityError:
            # Another coordinator process recorded the same key between our check and insert.
            with db.read() as session:
                return session.scalars(select(Artifact.id).where(Artifact.key == key)).one()

    def _start_job(self, job_id: int, artifact_id: int) -> None:
        """Hand the job, with its artifact's initial adapter as round 0's, to the life cycle."""
        with self.state.db.read() as session:
            files = {f.path: f for f in session.scalars(
                select(ArtifactFile).where(ArtifactFile.artifact_id == artifact_id)).all()}
        missing = [p for p in (INITIAL_ADAPTER_CONFIG, INITIAL_ADAPTER_WEIGHTS, ADAPTER_PTD) if p not in files]
        if missing:
            raise ValueError(f"artifact lacks {', '.join(missing)}")
        config, weights, ptd = (BlobRef(files[path].sha256, files[path].size)
                                for path in (INITIAL_ADAPTER_CONFIG, INITIAL_ADAPTER_WEIGHTS, ADAPTER_PTD))
        lifecycle.start_job(self.state, job_id, artifact_id, config, weights, ptd)
