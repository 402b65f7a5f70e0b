"""Artifacts for jobs: built through ``export/`` once per (model, tier), stored as blobs.

The cache key is the sha256 of the model name and the *compiled* part of the tier (pruning,
LoRA layout, quantization, batch, sequence length): the training hyper-parameters (learning
rate, local steps) are not compiled into the program, so jobs that differ only in them share
one artifact, and devices get the job's values in each task's ``train`` section instead.

Two layers of caching:

- the **artifact cache** directory (``--artifact-cache``, default ``<instance>/artifacts``)
  holds one exported directory per key, written all-or-nothing by ``export_artifact``; it
  can be shared by several coordinators (or test servers) so that an export happens once;
- the **database** records, per key, the manifest and every file's blob, so a second job
  with the same key reuses the artifact without touching the cache directory.

A job is prepared by :class:`ArtifactWorker`, a background thread (an export of SmolLM2 takes
minutes): ``preparing`` -> ``running`` (round 0's adapter stored, round 1 open) or ``failed``
with the error. Jobs still ``preparing`` when the coordinator starts are queued again.

The same worker builds the artifacts of the *other* tiers a job's configurator hands out
(``services/tiers.py``): on demand, the first time a device is given a tier
(:meth:`ArtifactWorker.request_tier`), or all of them before round 1 opens when the job says
``prepare_tiers: "all"``. A failed tier export is logged and retried on a later request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from coordinator.models import Artifact, ArtifactFile, GlobalAdapter, Job, JobStatus, utcnow
from coordinator.services.heavy_imports import ensure_heavy_imports

log = logging.getLogger(__name__)

ARTIFACT_FORMAT = "executorch"
#: Artifact formats the coordinator can build (one per on-device training runtime); a job's own
#: artifact is ExecuTorch, and a device that declares only ``onnxruntime`` gets the same tier
#: compiled for ONNX Runtime (built on demand, like any tier).
ARTIFACT_FORMATS = ("executorch", "onnxruntime")
MANIFEST_FILE = "manifest.json"
INITIAL_ADAPTER_CONFIG = "initial_adapter/adapter_config.json"
INITIAL_ADAPTER_WEIGHTS = "initial_adapter/adapter_model.safetensors"
ADAPTER_PTD = "lora.ptd"
_KEY_VERSION = 1

#: RAM a device needs per MiB of device files: SmolLM2-135M's 514 MB program trained in 1.4 GB
#: RSS in the ExecuTorch runtime (ENVIRONMENT.md), about 2.7x; plus a fixed runtime overhead.
RAM_PER_ARTIFACT_MB = 2.75
RAM_OVERHEAD_MB = 64


def compiled_tier(tier: dict) -> dict:
    """The part of a tier dict that changes the compiled program (everything but ``train``)."""
    return {key: value for key, value in tier.items() if key != "train"}


def artifact_key(model: str, tier: dict, artifact_format: str = ARTIFACT_FORMAT) -> str:
    """The content key of the artifact for ``model`` at ``tier`` (a ``Tier.to_dict()``) in a format.

    ExecuTorch programs take every optimizer setting at run time; ONNX Runtime artifacts
    compile their optimizer, so its settings are part of their key.
    """
    if artifact_format not in ARTIFACT_FORMATS:
        raise ValueError(f"unknown artifact format {artifact_format!r}; known: {', '.join(ARTIFACT_FORMATS)}")
    description = {"version": _KEY_VERSION, "format": artifact_format, "model": model,
                   "tier": compiled_tier(tier)}
    if artifact_format == "onnxruntime":
        from export.onnxruntime import compiled_optimizer
        from models.tier import Tier

        description["optimizer"] = compiled_optimizer(Tier.from_dict(tier).train)
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def required_ram_mb(manifest: dict) -> int:
    """A coarse estimate of the RAM a device needs to train this artifact."""
    device_bytes = sum(f["size"] for f in manifest["files"].values() if f["device"])
    return int(RAM_PER_ARTIFACT_MB * device_bytes / 2**20 + RAM_OVERHEAD_MB + 0.5)


class ArtifactCache:
    """Exported artifact directories, one per key, under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    def directory(self, key: str) -> Path:
        return self.root / key

    def ensure(self, model: str, tier_dict: dict, artifact_format: str = ARTIFACT_FORMAT) -> Path:
        """The artifact directory for (model, tier, format), exporting it if the cache does not have it."""
        from export.manifest import read_manifest

        key = artifact_key(model, tier_dict, artifact_format)
        directory = self.directory(key)
        with self._lock:  # one export at a time per process: exports take all the CPU anyway
            if (directory / MANIFEST_FILE).is_file():
                manifest = read_manifest(directory)
                self._check_entry(directory, manifest, model, tier_dict, artifact_format)
                log.info("artifact %s: using cached export %s", key[:12], directory)
                return directory
            ensure_heavy_imports()
            from export.pipeline import export_artifact
            from models.tier import Tier

            log.info("artifact %s: exporting %s for %s (this can take minutes)", key[:12], model, artifact_format)
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                export_artifact(model, Tier.from_dict(tier_dict), directory, save_pruned_base=True,
                                artifact_format=artifact_format)
            except FileExistsError:
                # Another process finished the same export first; its result is as good as ours.
                manifest = read_manifest(directory)
                self._check_entry(directory, manifest, model, tier_dict, artifact_format)
            return directory

    @staticmethod
    def _check_entry(directory: Path, manifest, model: str, tier_dict: dict, artifact_format: str) -> None:
        if (manifest.data["base_model"]["id"] != model or compiled_tier(manifest.tier) != compiled_tier(tier_dict)
                or manifest.data.get("format", ARTIFACT_FORMAT) != artifact_format):
            raise ValueError(f"artifact cache entry {directory} was exported for another model, tier or format")
        bad = manifest.verify_files(directory)
        if bad:
            raise ValueError(f"artifact cache entry {directory} is damaged ({', '.join(bad)}); delete it "
                             "to export again")


def _warm_up() -> None:
    try:
        ensure_heavy_imports()
    except Exception:  # noqa: BLE001 - a failed warm-up only costs time later
        log.exception("warming up imports failed")


class ArtifactWorker:
    """The background thread that prepares jobs: artifact, round 0's adapter, round 1."""

    def __init__(self, state):
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

    def request_tier(self, model: str, tier_dict: dict, artifact_format: str = ARTIFACT_FORMAT) -> None:
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
            with db.write() as session:
                job = db.lock(session, Job, job_id)
                if job is not None and job.status == JobStatus.PREPARING:
                    job.status, job.error, job.updated_at = JobStatus.FAILED, f"{type(exc).__name__}: {exc}", utcnow()

    def _prepare_tiers(self, job_id: int, artifact_id: int) -> None:
        """For ``prepare_tiers: "all"``: export every tier the job's configurator may hand out."""
        from coordinator.services.tiers import job_view
        from coordinator.scheduling.configurator import get_configurator

        with self.state.db.read() as session:
            job = session.get(Job, job_id)
            if job is None or job.prepare_tiers != "all" or job.configurator == "uniform":
                return
            view = job_view(self.state, session, job, 1, reference_artifact_id=artifact_id)
        tiers = get_configurator(job.configurator, job.configurator_options).candidate_tiers(view)
        for number, tier in enumerate(tiers, 1):
            log.info("job %s: preparing tier %d of %d", job_id, number, len(tiers))
            self._artifact_for(job.model, tier)

    def _artifact_for(self, model: str, tier_dict: dict, artifact_format: str = ARTIFACT_FORMAT) -> int:
        key = artifact_key(model, tier_dict, artifact_format)
        with self.state.db.read() as session:
            artifact = session.scalars(select(Artifact).where(Artifact.key == key)).one_or_none()
            if artifact is not None:
                files = session.scalars(select(ArtifactFile).where(ArtifactFile.artifact_id == artifact.id)).all()
                if all(self.state.blobs.exists(f.sha256) for f in files) and self.state.blobs.exists(
                        artifact.manifest_sha256):
                    return artifact.id
                log.warning("artifact %s: blobs missing; importing it again", key[:12])
        return self.import_directory(key, model, self.cache.ensure(model, tier_dict, artifact_format))

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
                artifact = Artifact(key=key, model=model, format=manifest.data.get("format", ARTIFACT_FORMAT),
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
        from coordinator.services.rounds import open_round

        db = self.state.db
        with db.read() as session:
            files = {f.path: f for f in session.scalars(
                select(ArtifactFile).where(ArtifactFile.artifact_id == artifact_id)).all()}
        missing = [p for p in (INITIAL_ADAPTER_CONFIG, INITIAL_ADAPTER_WEIGHTS, ADAPTER_PTD) if p not in files]
        if missing:
            raise ValueError(f"artifact lacks {', '.join(missing)}")
        with db.write() as session:
            job = db.lock(session, Job, job_id)
            if job is None or job.status != JobStatus.PREPARING:
                return  # cancelled meanwhile
            now = utcnow()
            session.add(GlobalAdapter(
                job_id=job.id, round=0, config_sha256=files[INITIAL_ADAPTER_CONFIG].sha256,
                weights_sha256=files[INITIAL_ADAPTER_WEIGHTS].sha256, weights_size=files[INITIAL_ADAPTER_WEIGHTS].size,
                ptd_sha256=files[ADAPTER_PTD].sha256, ptd_size=files[ADAPTER_PTD].size,
                num_updates=0, num_examples=0, strategy=None, created_at=now))
            job.artifact_id = artifact_id
            job.status, job.updated_at = JobStatus.RUNNING, now
            open_round(session, job, 1, now)
        log.info("job %s: running (artifact %s)", job_id, artifact_id)
        self.state.evaluator.submit(job_id, 0)  # the initial adapter: the tier's zero-shot score
