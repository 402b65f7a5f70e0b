"""Split jobs: their spec, their preparation (the devices' programs, the server's top) and where
the running ones live.

A split job is created by the admin (``POST /api/v1/split-jobs``) and prepared in a background
thread: the model gets LoRA on every layer (the device trains the bottom's), the bottom is
compiled once per batch size in ``batch_sizes`` (programs have fixed shapes; batch-size
regulation chooses among them) and the files go to the blob store, where devices fetch them as
they fetch any artifact; the top stays in this process as a :class:`SplitTop`. A running split
job is a :class:`coordinator.split.session.SplitSession` in memory: its top's weights change
every step, so it has exactly one owner process. A coordinator served by several processes
(gunicorn workers) must route a split job's requests to one of them; a request that reaches a
process that does not hold the job gets 404 ``not_found``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coordinator.errors import ApiError
from coordinator.fields import unknown_keys

log = logging.getLogger(__name__)

CLOCKS = ("wall", "conducted")
MAX_BATCH_SIZES = 4
MAX_STEPS = 100_000
#: Bump when the split programs change shape or content, so cached exports are not reused.
EXPORT_CACHE_VERSION = 2


@dataclass(frozen=True)
class SplitJobSpec:
    """What the admin asks for (validated by :func:`parse_split_spec`)."""

    model: str
    split_layer: int
    rank: int = 4
    seq: int = 64
    batch_sizes: tuple[int, ...] = (2, 4)
    target_batch: int = 8
    steps: int = 20
    average_every: int = 5
    step_deadline_s: float = 60.0
    mode: str = "mergesfl"
    lr: float = 0.05
    top_lr: float = 0.05
    top_optimizer: str = "sgd"
    loss_positions: int | None = None
    clock: str = "wall"
    kernels: str = "xnnpack"


def parse_split_spec(body: dict) -> SplitJobSpec:
    """The spec in ``body``, or :class:`ApiError` ``invalid_field`` naming what is wrong."""
    from coordinator.split.session import MODES

    allowed = set(SplitJobSpec.__dataclass_fields__)
    unknown_keys(body, allowed, "split job")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError("invalid_field", "model: give a model name (tiny, smollm2-135m)")
    values = dict(body)

    def integer(name, low, high):
        value = values.get(name, getattr(SplitJobSpec, name, None))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ApiError("invalid_field", f"{name}: an integer in [{low}, {high}], got {value!r}")
        return value

    def number(name, low, high):
        value = values.get(name, getattr(SplitJobSpec, name))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
            raise ApiError("invalid_field", f"{name}: a number in ({low}, {high}], got {value!r}")
        return float(value)

    def choice(name, options):
        value = values.get(name, getattr(SplitJobSpec, name))
        if value not in options:
            raise ApiError("invalid_field", f"{name}: one of {', '.join(options)}, got {value!r}")
        return value

    if "split_layer" not in values:
        raise ApiError("invalid_field", "split_layer: the first layer the server runs (the device runs those below)")
    sizes = values.get("batch_sizes", list(SplitJobSpec.batch_sizes))
    if not isinstance(sizes, list) or not 1 <= len(sizes) <= MAX_BATCH_SIZES or \
            not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 64 for s in sizes) \
            or len(set(sizes)) != len(sizes):
        raise ApiError("invalid_field", f"batch_sizes: 1 to {MAX_BATCH_SIZES} distinct integers in [1, 64] "
                                        f"(one program is compiled per size), got {sizes!r}")
    spec = SplitJobSpec(model=values["model"], split_layer=integer("split_layer", 1, 1000),
                        rank=integer("rank", 1, 64), seq=integer("seq", 8, 2048), batch_sizes=tuple(sorted(sizes)),
                        target_batch=integer("target_batch", 1, 1024), steps=integer("steps", 1, MAX_STEPS),
                        average_every=integer("average_every", 1, MAX_STEPS),
                        step_deadline_s=number("step_deadline_s", 0, 86_400), mode=choice("mode", MODES),
                        lr=number("lr", 0, 10), top_lr=number("top_lr", 0, 10),
                        top_optimizer=choice("top_optimizer", ("sgd", "adamw")),
                        loss_positions=None if values.get("loss_positions") is None
                        else integer("loss_positions", 1, 2048), clock=choice("clock", CLOCKS),
                        kernels=choice("kernels", ("xnnpack", "portable")))
    return spec


class ConductedClock:
    """A clock the conductor (the admin's simulator) sets: virtual time, never a device's claim.
    It only moves forward."""

    def __init__(self):
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance_to(self, moment: float) -> None:
        with self._lock:
            if moment < self.now:
                raise ApiError("invalid_field", f"now: the clock moves forward only (it reads {self.now})")
            self.now = float(moment)


@dataclass
class SplitJob:
    """One split job in this process: its spec, status and, once prepared, its manifest and session."""

    job_id: int
    spec: SplitJobSpec
    status: str = "preparing"
    error: str | None = None
    manifest: dict | None = None
    session: object = None
    clock: Callable[[], float] = field(default=time.monotonic)
    created_at: float = field(default_factory=time.time)
    #: once stopped: the job's model as one adapter and its last progress (the session, whose
    #: top holds a copy of the model, is let go)
    final_adapter: dict | None = None
    final_progress: dict | None = None

    def stop(self) -> None:
        """End the job now: keep its model (the newest average of the bottoms and the top) and its
        progress, and free the session and the top's model (a job otherwise holds them for as
        long as the process runs). Devices are then refused with 409 ``job_not_running``."""
        if self.status != "running":
            raise ValueError(f"split job {self.job_id} is {self.status}; only a running job can be stopped")
        session = self.session
        self.final_adapter, self.final_progress = session.full_adapter(), session.summary()
        self.status, self.session = "stopped", None

    def full_adapter(self) -> dict:
        """The job's model as one PEFT adapter (while it runs, or as it was stopped)."""
        if self.session is not None:
            return self.session.full_adapter()
        if self.final_adapter is None:
            raise ValueError(f"split job {self.job_id} is {self.status}: it has no model")
        return self.final_adapter

    def device_files(self) -> set[str]:
        """The blobs this job's devices may fetch."""
        if self.manifest is None:
            return set()
        return {ref["sha256"] for files in self.manifest["programs"].values() for ref in files.values()} \
            | {self.manifest["adapter"]["sha256"]}

    def device_payload(self) -> dict:
        """What a device may see: the job's status and spec, not other devices' labels or speeds."""
        body = {"split_job_id": self.job_id, "status": self.status, "spec": asdict(self.spec)}
        body["spec"]["batch_sizes"] = list(self.spec.batch_sizes)
        if self.session is not None:
            body["steps_run"], body["done"] = self.session.steps_run, self.session.done
        return body

    def payload(self) -> dict:
        body = {"split_job_id": self.job_id, "status": self.status, "error": self.error, "spec": asdict(self.spec)}
        body["spec"]["batch_sizes"] = list(self.spec.batch_sizes)
        if self.session is not None:
            body["progress"] = self.session.summary()
        elif self.final_progress is not None:
            body["progress"] = self.final_progress
        if isinstance(self.clock, ConductedClock):
            body["clock_now"] = self.clock.now
        return body


class SplitJobs:
    """The split jobs this process holds, prepared in background threads."""

    def __init__(self, blobs, export_cache_dir: Path | None = None):
        self.blobs = blobs
        self.export_cache_dir = Path(export_cache_dir) if export_cache_dir is not None else None
        self._jobs: dict[int, SplitJob] = {}
        self._lock = threading.Lock()

    def create(self, spec: SplitJobSpec, *, wait: bool = False) -> SplitJob:
        with self._lock:
            job = SplitJob(job_id=len(self._jobs) + 1, spec=spec,
                           clock=ConductedClock() if spec.clock == "conducted" else time.monotonic)
            self._jobs[job.job_id] = job
        thread = threading.Thread(target=self._prepare, args=(job,), name=f"split-job-{job.job_id}", daemon=True)
        thread.start()
        if wait:
            thread.join()
        return job

    def get(self, job_id: int) -> SplitJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError("not_found", f"no split job {job_id} in this coordinator process")
        return job

    def publishes(self, sha256: str) -> bool:
        """Whether a prepared split job hands this blob to its devices (a program or its adapter)."""
        return any(sha256 in job.device_files() for job in list(self._jobs.values()))

    def all(self) -> list[SplitJob]:
        return [self._jobs[k] for k in sorted(self._jobs)]

    def _prepare(self, job: SplitJob) -> None:
        try:
            job.manifest, job.session = prepare(job.spec, self.blobs, job.clock, self.export_cache_dir)
            job.status = "running"
        except Exception as exc:                          # reported on the job, never lost in a thread
            log.exception("split job %s failed to prepare", job.job_id)
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"


def prepare(spec: SplitJobSpec, blobs, clock, export_cache_dir: Path | None = None):
    """Compile the bottom per batch size into the blob store; build the top and the session.
    Returns (manifest, session).

    With ``export_cache_dir`` the compiled programs are kept under a key of everything that
    shapes them (model, rank, cut, batch, seq, kernels: the LoRA start weights are seeded), so
    a second job with the same shapes does not compile again."""
    from coordinator.services.heavy_imports import ensure_heavy_imports

    ensure_heavy_imports()
    from coordinator.split.session import SplitSession
    from coordinator.split.top import SplitTop
    from export.split_programs import BOTTOM_ADAPTER_FILE, BOTTOM_PROGRAM_FILE
    from export.executorch import read_adapter_ptd
    from models.lora import apply_lora, resolve_layout
    from models.registry import load_base_model

    base = load_base_model(spec.model)
    depth = base.config.num_hidden_layers
    if not 1 <= spec.split_layer < depth:
        raise ValueError(f"split_layer must be in [1, {depth - 1}] for {spec.model} ({depth} layers)")
    peft = apply_lora(base.model, resolve_layout(depth, spec.rank, depth))
    programs, report = {}, None
    with tempfile.TemporaryDirectory(prefix="split-export-") as tmp:
        for size in spec.batch_sizes:
            out = _cached_export(peft, spec, size, Path(tmp) / f"b{size}", export_cache_dir)
            report = json.loads((out / REPORT_FILE).read_text())
            programs[str(size)] = {"program": _ref(blobs.put_file(out / BOTTOM_PROGRAM_FILE))}
        adapter_ref = _ref(blobs.put_file(out / BOTTOM_ADAPTER_FILE))
        adapter = read_adapter_ptd(out / BOTTOM_ADAPTER_FILE)
    hidden = report["features_shape"][-1]
    top = SplitTop(peft, spec.split_layer, spec.top_lr, optimizer=spec.top_optimizer,
                   loss_positions=spec.loss_positions)
    session = SplitSession(top, start_adapter=adapter, seq=spec.seq,
                           hidden=hidden, vocab_size=peft.config.vocab_size, compiled_sizes=spec.batch_sizes,
                           target_batch=spec.target_batch, steps=spec.steps, average_every=spec.average_every,
                           step_deadline_s=spec.step_deadline_s, mode=spec.mode, clock=clock)
    manifest = {"model": spec.model, "split_layer": spec.split_layer, "seq": spec.seq, "hidden": hidden,
                "lr": spec.lr, "lora_inputs": report["lora_inputs"], "programs": programs, "adapter": adapter_ref,
                "kernels": spec.kernels}
    return manifest, session


REPORT_FILE = "split_report.json"


def _cached_export(peft, spec: SplitJobSpec, size: int, scratch: Path, cache_dir: Path | None) -> Path:
    """The directory holding the bottom programs for batch ``size`` (compiled now, or cached)."""
    from export.split_programs import export_split_programs

    key = hashlib.sha256(json.dumps([EXPORT_CACHE_VERSION, spec.model, spec.rank, spec.split_layer, size, spec.seq,
                                     spec.kernels]).encode()).hexdigest()[:16]
    target = cache_dir / f"split-{key}" if cache_dir is not None else scratch
    if (target / REPORT_FILE).is_file():
        return target
    building = scratch.with_name(scratch.name + "-build")
    report = export_split_programs(peft, spec.split_layer, size, spec.seq, building, kernels=spec.kernels)
    (building / REPORT_FILE).write_text(json.dumps({k: report[k] for k in ("features_shape", "lora_inputs")}))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():                     # a half-written entry from an interrupted run
        shutil.rmtree(target)
    shutil.move(str(building), str(target))
    return target


def _ref(blob) -> dict:
    """A stored file as the manifest names it (the API adds each blob's URL)."""
    return {"sha256": blob.sha256, "size": blob.size}
