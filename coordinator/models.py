"""The coordinator's tables (SQLAlchemy 2 declarative models).

Every state change the protocol needs to survive a crash lives here: devices and their
hashed tokens, jobs and their artifact, rounds (with the global adapter each one starts
from and produces), tasks handed to devices, and accepted updates. Bytes never live in the
database: tables hold the sha256 of blobs in :mod:`coordinator.storage`.

Invariants the schema itself enforces, so that no code path (or concurrent race) can break
them even if a lock were forgotten:

- one round row per ``(job, number)``: a round is opened exactly once;
- one global adapter per ``(job, round)``: a round is aggregated exactly once;
- one task per ``(round, device)``: a device is in a round at most once;
- one update per task: a task's result is accepted at most once;
- one evaluation per ``(job, round)``: a global adapter is scored at most once.

One table is a log rather than state: ``rejections`` records every refused upload (what the
dashboard shows operators). Writing it never touches the round, its tasks, its updates or
any blob, so a rejected upload still leaves training exactly as it was.

Timestamps are stored as naive UTC (portable across SQLite and PostgreSQL) and come back
timezone-aware (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Text,
                        TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: Alembic migrations can then refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SHA256_HEX = 64


def utcnow() -> datetime:
    """The coordinator's clock: timezone-aware UTC, from this process."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Naive UTC in the database, aware UTC in Python (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use coordinator.models.utcnow()")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- status values (strings in the database, listed here once) ---------------------------------

class JobStatus:
    PREPARING = "preparing"    # the artifact is being built or imported (background worker)
    RUNNING = "running"        # rounds are being played
    PAUSED = "paused"          # an admin paused it: no new tasks or rounds until resumed
    COMPLETED = "completed"    # the last round was aggregated
    FAILED = "failed"          # preparing failed; ``Job.error`` says why
    CANCELLED = "cancelled"    # an admin stopped it
    ALL = (PREPARING, RUNNING, PAUSED, COMPLETED, FAILED, CANCELLED)


class RoundStatus:
    OPEN = "open"                  # hands out tasks, accepts results
    AGGREGATING = "aggregating"    # no more results; its set of updates is frozen
    CLOSED = "closed"              # aggregated; its global adapter exists
    CANCELLED = "cancelled"        # the job was cancelled while this round was open or aggregating
    FAILED = "failed"              # its aggregation failed; ``Round.error`` says why (the job failed too)
    ALL = (OPEN, AGGREGATING, CLOSED, CANCELLED, FAILED)


class TaskStatus:
    ASSIGNED = "assigned"
    SUBMITTED = "submitted"


class CloseReason:
    MIN_UPDATES = "min_updates"
    DEADLINE = "deadline"
    #: an admin closed the round early with what it had (``POST .../rounds/<n>/close``): e.g. a
    #: simulation whose virtual deadline passed before the coordinator's real one
    ADMIN = "admin"


# --- tables ------------------------------------------------------------------------------------

class Device(Base):
    """A registered phone (or simulated device); it authenticates with a bearer token."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(100))
    #: sha256 of the bearer token; the token itself is shown once, at registration.
    token_sha256: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    #: ram_mb, cores, gflops, bandwidth_mbps, runtimes (see api/devices.py for the schema).
    capabilities: Mapped[dict] = mapped_column(JSON)
    battery: Mapped[float | None] = mapped_column(Float, nullable=True)
    charging: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Set when an admin disabled the device: its token is refused (403) from then on.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Artifact(Base):
    """One exported (model, tier) artifact, every file of it stored as a blob."""

    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: sha256 of the canonical (model, compiled tier) description: the cache key.
    key: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    model: Mapped[str] = mapped_column(String(500))
    format: Mapped[str] = mapped_column(String(50))
    manifest: Mapped[dict] = mapped_column(JSON)
    manifest_sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    manifest_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ArtifactFile(Base):
    """A file of an artifact (path relative to the artifact directory) and its blob."""

    __tablename__ = "artifact_files"
    __table_args__ = (UniqueConstraint("artifact_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"), index=True)
    path: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    #: whether a device downloads it (program, .ptd, tokenizer) or it stays on the server.
    device: Mapped[bool] = mapped_column(Boolean)


class Job(Base):
    """A federated fine-tuning job: what to train, how many rounds, and how rounds close."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(500))
    task: Mapped[str] = mapped_column(String(200))
    #: ``models.tier.Tier.to_dict()``, training hyper-parameters included.
    tier: Mapped[dict] = mapped_column(JSON)
    rounds: Mapped[int] = mapped_column(Integer)
    devices_per_round: Mapped[int] = mapped_column(Integer)
    min_updates: Mapped[int] = mapped_column(Integer)
    round_deadline_s: Mapped[float] = mapped_column(Float)
    local_steps: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    strategy: Mapped[str] = mapped_column(String(100))
    max_update_norm: Mapped[float] = mapped_column(Float)
    #: At aggregation, an update whose change from its start adapter is longer than this many
    #: times the round's median change is scaled down to that length (None: never).
    norm_clip_factor: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: devices with less RAM than this are not selected (None: estimated from the artifact).
    min_ram_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: held-out examples each global adapter is evaluated on (0: no evaluation).
    eval_examples: Mapped[int] = mapped_column(Integer, default=100, server_default="100")
    #: score every ``eval_every``-th global adapter only (round 0 and the last always; see
    #: models.eval_schedule): scoring costs about as much host time as a round.
    eval_every: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: who picks each device's tier (``coordinator.scheduling``): "uniform" gives every device
    #: the job's tier; others give sub-tiers of it (the job's tier is then the *reference*).
    configurator: Mapped[str] = mapped_column(String(100), default="uniform", server_default="uniform")
    configurator_options: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: "on_demand": a tier's artifact is exported the first time a device is given it;
    #: "all": every tier the configurator may hand out is exported before round 1 opens.
    prepare_tiers: Mapped[str] = mapped_column(String(20), default="on_demand", server_default="on_demand")
    #: client-level differential privacy (``coordinator.privacy.settings.PrivacySettings``), or None.
    privacy: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: how devices send their updates (``models/update_codecs``: ``{"name": ..., **options}``);
    #: None: ``fp32``, the trained values themselves.
    update_encoding: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Round(Base):
    """Training round ``number`` (1..job.rounds): starts from global adapter ``number - 1``."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), index=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: set when the round stops accepting results (its update set is frozen from then on).
    frozen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    close_reason: Mapped[str | None] = mapped_column(String(20), nullable=True)
    num_updates: Mapped[int] = mapped_column(Integer, default=0)
    #: Why the round's aggregation failed (status ``failed``), else None.
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class GlobalAdapter(Base):
    """The global adapter after round ``round`` (0: the artifact's initial adapter)."""

    __tablename__ = "global_adapters"
    __table_args__ = (UniqueConstraint("job_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    #: PEFT adapter directory: adapter_config.json and adapter_model.safetensors blobs.
    config_sha256: Mapped[str] = mapped_column(String(SHA256_HEX))
    weights_sha256: Mapped[str] = mapped_column(String(SHA256_HEX), index=True)
    weights_size: Mapped[int] = mapped_column(BigInteger)
    #: the same tensors as an ExecuTorch .ptd, what devices load beside the program.
    ptd_sha256: Mapped[str] = mapped_column(String(SHA256_HEX), index=True)
    ptd_size: Mapped[int] = mapped_column(BigInteger)
    num_updates: Mapped[int] = mapped_column(Integer)
    #: 64-bit: a sum over the round's updates (each bounded by its task's steps x batch).
    num_examples: Mapped[int] = mapped_column(BigInteger)
    #: updates scaled down to the round's norm bound before aggregation (``Job.norm_clip_factor``).
    num_clipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    strategy: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: DP jobs: epsilon spent (at the job's delta) once this adapter is released; else None.
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PruningSource(Base):
    """A global adapter that chose what one of a job's pruned tiers keeps (FedSpine's iterative
    prune-and-tune; which devices get which source: ``services/pruning_sources.py``)."""

    __tablename__ = "pruning_sources"
    __table_args__ = (UniqueConstraint("job_id", "prune_ratio", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    prune_ratio: Mapped[float] = mapped_column(Float)
    #: the global adapter after this round (0: the untrained one, so the base alone decides).
    round: Mapped[int] = mapped_column(Integer)
    #: its adapter_model.safetensors blob; None for round 0 (nothing tuned yet to merge).
    adapter_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Task(Base):
    """A device's place in a round: it trains from the round's start adapter and uploads once."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("round_id", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The device's tier for this task when it differs from the job's (None: the job's artifact
    #: and global adapter as they are). ``start_*``: the global adapter cut to this tier.
    #: (An artifacts.id without a foreign-key constraint: SQLite cannot add one to an existing
    #: table without copying it, which the rows that reference tasks forbid.)
    artifact_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    arm: Mapped[str | None] = mapped_column(String(100), nullable=True)
    tier: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    local_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_weights_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX), nullable=True)
    start_ptd_sha256: Mapped[str | None] = mapped_column(String(SHA256_HEX), nullable=True, index=True)
    start_ptd_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Update(Base):
    """An accepted upload: the new adapter values of one task, as a safetensors blob."""

    __tablename__ = "updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), unique=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(SHA256_HEX), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    #: bytes of the update as the device sent it (its encoding's form; ``size`` is what is stored,
    #: the decoded fp32 tensors); None for rows older than encodings.
    wire_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    num_examples: Mapped[int] = mapped_column(Integer)
    loss_before: Mapped[float] = mapped_column(Float)
    loss_after: Mapped[float] = mapped_column(Float)
    train_seconds: Mapped[float] = mapped_column(Float)
    bytes_downloaded: Mapped[int] = mapped_column(BigInteger)
    bytes_uploaded: Mapped[int] = mapped_column(BigInteger)
    #: L2 norm of (update - round's start adapter) over all tensors, as validated.
    delta_norm: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the device's hardware measurements (``meta.metrics``, validated), None if it sent none.
    #: (``none_as_null``: SQL NULL, not the JSON value null, so that ``IS NULL`` finds them.)
    metrics: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    #: the highest LoRA rank the update uses (``models.rank_pruning.effective_rank``), read from
    #: its tensors: lower than its tier's when the device pruned its rank (HetLoRA). None for
    #: updates stored before it was recorded.
    effective_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Evaluation(Base):
    """Global adapter ``round`` of a job (0: the initial one) scored on the task's held-out split.

    Written once by the evaluation worker; a failed evaluation is recorded too (``error``
    set, the scores None), so it is reported rather than retried on every start.
    """

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    #: the task's metric: "accuracy" (higher is better) or "perplexity" (lower is better).
    metric: Mapped[str | None] = mapped_column(String(50), nullable=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: 95% interval of ``value`` over the evaluated examples (Wilson for accuracy, bootstrap for
    #: perplexity: ``models/intervals.py``); None for rows written before intervals existed.
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    num_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: wall time of the evaluation itself (loading the model the first time included).
    seconds: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Rejection(Base):
    """A refused result upload, kept so operators can see who was refused and why.

    Only uploads for a task that exists are logged (``task_id`` set); an upload for an
    unknown task has no round to show it in. The round's own state is never changed by it.
    """

    __tablename__ = "rejections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    #: the device that sent it (for ``forbidden``, not the task's own device).
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    #: the error code the device was answered with (``coordinator.errors``), and its message.
    code: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    #: bytes of the update part as received (0 when it was missing).
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
