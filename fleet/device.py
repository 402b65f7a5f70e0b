"""One PocketTune device: register, fetch verified artifacts, train in ExecuTorch or ONNX Runtime, upload.

The device loop (:meth:`DeviceAgent.run`):

1. register once (the token is kept in ``<state>/device.json``), reporting capabilities it
   measured itself (matmul GFLOP/s) or that its simulated profile sets (RAM, bandwidth);
2. ask for a task; with none, wait as long as the coordinator suggests (heartbeating);
3. fetch the artifact's manifest and device files and the round's global adapter, each
   sha256-checked, into a content-addressed cache (a file already there is not fetched
   again; an interrupted fetch resumes);
4. train the artifact on this round's slice of its local data, tokenized exactly as the task
   (and the manifest's tokenizer) says, in the runtime its format names (the device declares
   which runtimes it has: ``executorch``, ``onnxruntime``, or both in order of preference);
5. upload the adapter's new values and the metrics (losses, time, bytes, FLOPs and FLOP
   utilization); ``already_submitted`` after a lost answer counts as done.

A coordinator that is down or restarting is waited out with backoff (``fleet.transport``);
a file whose sha256 does not match is refused and the task is not trained.
"""

from __future__ import annotations

import json
import logging
import platform as platform_module
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from export.manifest import program_batch_shape
from fleet.data import LocalData, round_examples
from fleet.hardware import measure_matmul_gflops, training_flops, utilization
from fleet.profiles import PROFILES, DeviceProfile
from fleet.transport import CoordinatorClient, IntegrityError, ProtocolError, RetryPolicy, Throttle

log = logging.getLogger(__name__)

RUNTIME = "executorch"
#: The on-device training runtimes this Python device can drive (artifact formats, same names).
RUNTIMES = ("executorch", "onnxruntime")
#: The optimizers it trains with on either runtime: SGD, and AdamW (stepped over the ExecuTorch
#: runtime's own tensors, or compiled into the ONNX Runtime optimizer model).
OPTIMIZERS = ("sgd", "adamw")
STATE_FILE = "device.json"


def default_platform(runtime: str = RUNTIME) -> str:
    return f"python-{runtime}/{platform_module.system().lower()}-{platform_module.machine()}"


@dataclass
class TaskOutcome:
    """What happened to one task on this device (the simulator aggregates these)."""

    device: str
    task_id: int
    job_id: int
    round: int
    status: str                  # accepted | dropped | rejected:<code> | refused_artifact
    profile: str = "native"
    num_examples: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    compute_seconds: float = 0.0
    train_seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    download_seconds: float = 0.0
    upload_seconds: float = 0.0
    flops_per_step: float = 0.0
    steps: int = 0
    achieved_gflops: float = 0.0
    peak_gflops: float = 0.0
    flop_utilization: float = 0.0
    #: examples whose frozen-prefix output was computed for this task (not found in the cache)
    prefix_computed: int = 0
    #: the configurator's label for this task's tier (None: the job's own tier)
    arm: str | None = None
    #: the part of ``bytes_down`` that was the artifact (program, data, tokenizer): paid once per
    #: tier a device is given, unlike the adapter every task fetches
    artifact_bytes_down: int = 0
    #: simulated time on this device's profile: transfers at its bandwidth, compute x slowdown
    virtual_seconds: float = 0.0
    #: the artifact format (training runtime) of the task: executorch or onnxruntime
    runtime: str | None = None
    detail: str = ""
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DeviceConfig:
    coordinator: str
    state_dir: Path
    data: LocalData
    enrollment_key: str | None = None
    name: str = "device"
    platform: str = field(default_factory=default_platform)
    profile: DeviceProfile = PROFILES["native"]
    #: 0: run at this machine's speed and account the profile on the virtual clock only;
    #: f > 0: also sleep so that real time is f x the profile's time (compute and transfers).
    realtime_factor: float = 0.0
    seed: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: measured once at start; tests pass a number to skip the 0.3 s micro-benchmark
    peak_gflops: float | None = None
    #: training runtimes this device declares, in order of preference (the coordinator sends
    #: artifacts in one of these formats)
    runtimes: tuple[str, ...] = (RUNTIME,)
    #: intra-op threads for the ONNX Runtime session (0: one per core); ExecuTorch's threadpool
    #: is process-wide and set with ``fleet.runtime_executorch.set_runtime_threads``
    threads: int = 0

    def __post_init__(self):
        unknown = [runtime for runtime in self.runtimes if runtime not in RUNTIMES]
        if not self.runtimes or unknown:
            raise ValueError(f"runtimes must be a non-empty subset of {', '.join(RUNTIMES)}, got {list(self.runtimes)}")


class DeviceAgent:
    """One device's state and protocol loop (several agents may share a process)."""

    def __init__(self, config: DeviceConfig):
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        profile = config.profile.validate()
        cap = None
        if config.realtime_factor > 0:
            cap = profile.bandwidth_mbps * 1e6 / 8 / config.realtime_factor
        self.client = CoordinatorClient(config.coordinator, retry=config.retry, throttle=Throttle(cap),
                                        seed=config.seed)
        self.rng = random.Random(config.seed)
        self.device_id: int | None = None
        self.heartbeat_interval_s = 30.0
        self._measured_gflops = config.peak_gflops
        self._abandoned: set[int] = set()     # tasks this device dropped out of (it stays away)
        self._finished: set[int] = set()
        self._previous_upload_seconds: float | None = None
        self._tokenizers: dict[str, object] = {}
        self._load_state()

    # --- identity ------------------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load_state(self) -> None:
        path = self._state_path()
        if path.is_file():
            state = json.loads(path.read_text())
            if state.get("coordinator") == self.config.coordinator:
                self.device_id, self.client.token = state["device_id"], state["token"]

    @property
    def peak_gflops(self) -> float:
        """The device's matmul peak: measured on this machine, divided by the profile's slowdown."""
        if self._measured_gflops is None:
            self._measured_gflops = measure_matmul_gflops()
        return self._measured_gflops / self.config.profile.slowdown

    def capabilities(self) -> dict:
        profile = self.config.profile
        return {"ram_mb": int(profile.ram_mb), "cores": 1, "gflops": round(self.peak_gflops, 3),
                "bandwidth_mbps": float(profile.bandwidth_mbps), "runtimes": list(self.config.runtimes),
                "optimizers": list(OPTIMIZERS)}

    def ensure_registered(self) -> int:
        """Register with the enrollment key unless a saved token exists; returns the device id."""
        if self.device_id is not None:
            return self.device_id
        if not self.config.enrollment_key:
            raise RuntimeError("this device is not registered yet: pass the coordinator's enrollment key (--enroll)")
        profile = self.config.profile
        answer = self.client.register(self.config.enrollment_key, self.config.name, self.config.platform,
                                      self.capabilities(), battery=profile.battery, charging=profile.charging)
        self.device_id, self.client.token = answer["device_id"], answer["token"]
        self.heartbeat_interval_s = float(answer.get("heartbeat_interval_s", self.heartbeat_interval_s))
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"coordinator": self.config.coordinator, "device_id": self.device_id,
                                   "token": answer["token"]}))
        tmp.chmod(0o600)
        tmp.replace(self._state_path())
        log.info("%s registered as device %s", self.config.name, self.device_id)
        return self.device_id

    # --- the loop --------------------------------------------------------------------------

    def run(self, max_tasks: int | None = None, idle_exit_s: float | None = None, stop=lambda: False,
            on_outcome=None) -> list[TaskOutcome]:
        """Work until ``max_tasks`` tasks were handled, ``idle_exit_s`` passed without one, or ``stop()``."""
        self.ensure_registered()
        outcomes: list[TaskOutcome] = []
        idle_since, last_heartbeat = time.monotonic(), 0.0
        while not stop() and (max_tasks is None or len(outcomes) < max_tasks):
            outcome, wait = self.work_once()
            if outcome is not None:
                outcomes.append(outcome)
                if on_outcome:
                    on_outcome(outcome)
                idle_since = time.monotonic()
                continue
            if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                break
            if time.monotonic() - last_heartbeat >= self.heartbeat_interval_s:
                profile = self.config.profile
                self.client.heartbeat(battery=profile.battery, charging=profile.charging)
                last_heartbeat = time.monotonic()
            # With an idle limit, look at the clock at least every second.
            time.sleep(wait if idle_exit_s is None else min(wait, 1.0))
        return outcomes

    def work_once(self) -> tuple[TaskOutcome | None, float]:
        """Ask for a task and do it: (outcome, 0) or (None, seconds to wait before asking again)."""
        task, reason, retry_after = self.client.next_task()
        if task is None:
            log.debug("%s: no task (%s)", self.config.name, reason)
            return None, retry_after or 2.0
        if task["task_id"] in self._abandoned or task["task_id"] in self._finished:
            return None, 1.0                 # a dropped-out device stays away for the round
        return self.do_task(task), 0.0

    # --- one task --------------------------------------------------------------------------

    def do_task(self, task: dict) -> TaskOutcome:
        profile = self.config.profile
        outcome = TaskOutcome(device=self.config.name, task_id=task["task_id"], job_id=task["job_id"],
                              round=task["round"], status="", profile=profile.name, arm=task.get("arm"))
        before = (self.client.transfers.bytes_down, self.client.transfers.seconds_down)
        try:
            artifact_dir, manifest = self.fetch_artifact(task["artifact"])
            outcome.runtime = manifest["format"]
            outcome.artifact_bytes_down = self.client.transfers.bytes_down - before[0]
            adapter_path = self.fetch_adapter(task["adapter"], manifest["format"])
        except IntegrityError as exc:
            log.error("%s: %s", self.config.name, exc)
            self._abandoned.add(task["task_id"])
            outcome.status, outcome.detail = "refused_artifact", str(exc)
            return outcome
        outcome.bytes_down = self.client.transfers.bytes_down - before[0]
        outcome.download_seconds = self.client.transfers.seconds_down - before[1]

        train = task["train"]
        batch, seq = program_batch_shape(manifest)
        if (train["batch"], train["seq"]) != (batch, seq):
            raise ProtocolError(0, "inconsistent_task", f"task says batch/seq {train['batch']}/{train['seq']}, "
                                                        f"the program was compiled for {batch}/{seq}")
        if task.get("dataset") != self.config.data.task.name:
            log.warning("%s: the job's dataset is %r; this device trains on its own %s", self.config.name,
                        task.get("dataset"), self.config.data.description)
        steps = int(train["steps"])
        drop_at = self.rng.randrange(steps) if self.rng.random() < profile.dropout else None

        started = time.perf_counter()
        tokenizer = self._tokenizer(artifact_dir, manifest)
        examples = round_examples(self.config.data.examples, task["round"], steps, batch)
        batches = self.config.data.task.batches(tokenizer, examples, batch, seq)
        trainer = self._trainer(artifact_dir, manifest, adapter_path, train)
        compute, losses = 0.0, []
        if getattr(trainer, "prefix", None) is not None:
            # The frozen prefix of this round's examples, computed once (cached across rounds).
            t0 = time.perf_counter()
            trainer.prepare(batches)
            elapsed = time.perf_counter() - t0
            compute += elapsed
            self._emulate_compute(elapsed)
            outcome.prefix_computed = trainer.prefix.stats.computed
        for step, (ids, labels) in enumerate(batches):
            if drop_at is not None and step == drop_at:
                self._abandoned.add(task["task_id"])
                outcome.status, outcome.steps, outcome.compute_seconds = "dropped", step, compute
                outcome.detail = f"dropped out after {step} of {steps} steps"
                outcome.virtual_seconds = self._virtual_seconds(outcome)
                log.info("%s: %s (task %s)", self.config.name, outcome.detail, task["task_id"])
                return outcome
            t0 = time.perf_counter()
            losses.append(trainer.step(ids, labels))
            elapsed = time.perf_counter() - t0
            compute += elapsed
            self._emulate_compute(elapsed)
        t0 = time.perf_counter()
        loss_after = trainer.loss(*batches[0])   # the first batch again: the before/after pair is comparable
        elapsed = time.perf_counter() - t0
        compute += elapsed
        self._emulate_compute(elapsed)
        outcome.train_seconds = time.perf_counter() - started
        outcome.compute_seconds, outcome.steps = compute, steps + 1
        outcome.loss_before, outcome.loss_after = losses[0], loss_after
        outcome.num_examples = min(len(self.config.data.examples), steps * batch)

        from safetensors.torch import save

        update = save(trainer.adapter_tensors())
        outcome.flops_per_step = training_flops(manifest).total
        outcome.peak_gflops = self.peak_gflops
        # Utilization against this device's peak uses its (profile-scaled) compute time.
        scaled = compute * profile.slowdown
        outcome.__dict__.update(utilization(outcome.flops_per_step, outcome.steps, scaled, outcome.peak_gflops))
        outcome.bytes_up = len(update)
        outcome.virtual_seconds = self._virtual_seconds(outcome)
        meta = {"num_examples": outcome.num_examples, "loss_before": outcome.loss_before,
                "loss_after": outcome.loss_after, "train_seconds": scaled,
                "bytes_downloaded": outcome.bytes_down, "bytes_uploaded": outcome.bytes_up,
                # ties the update to the adapter this task started from (the coordinator checks it)
                "start_adapter_sha256": task["adapter"]["sha256"],
                "metrics": self._metrics(outcome)}
        up_before = self.client.transfers.seconds_up
        try:
            self.client.upload_result(task["upload"]["url"], meta, update)
            outcome.status = "accepted"
        except ProtocolError as exc:
            outcome.status, outcome.detail = f"rejected:{exc.code}", exc.message
            log.info("%s: upload for task %s refused: %s", self.config.name, task["task_id"], exc)
        outcome.upload_seconds = self.client.transfers.seconds_up - up_before
        self._previous_upload_seconds = outcome.upload_seconds
        self._finished.add(task["task_id"])
        return outcome

    def _trainer(self, artifact_dir: Path, manifest: dict, adapter_path: Path, train: dict):
        """The runtime the artifact's format calls for, loaded with the task's start adapter."""
        if manifest["format"] == "onnxruntime":
            from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter

            compiled = manifest["program"]["optimizer"]["optimizer"]
            if train.get("optimizer", "sgd") != compiled:
                raise ProtocolError(0, "inconsistent_task", f"task says optimizer {train.get('optimizer')!r}, "
                                                            f"the artifact compiled {compiled!r}")
            return OnnxRuntimeTrainer(artifact_dir, manifest, read_start_adapter(adapter_path), lr=train["lr"],
                                      threads=self.config.threads)
        from fleet.runtime_executorch import ExecuTorchTrainer

        return ExecuTorchTrainer.for_artifact(artifact_dir, manifest, adapter_path, lr=train["lr"],
                                              momentum=train.get("momentum", 0.0),
                                              weight_decay=train.get("weight_decay", 0.0),
                                              cache_dir=self.state_dir / "prefix_cache",
                                              optimizer=train.get("optimizer", "sgd"),
                                              betas=tuple(train.get("betas", (0.9, 0.999))),
                                              eps=train.get("eps", 1e-8))

    def _metrics(self, outcome: TaskOutcome) -> dict:
        metrics = {"steps": outcome.steps, "flops_per_step": outcome.flops_per_step,
                   "compute_seconds": outcome.compute_seconds * self.config.profile.slowdown,
                   "achieved_gflops": outcome.achieved_gflops, "peak_gflops": outcome.peak_gflops,
                   "flop_utilization": outcome.flop_utilization, "download_seconds": outcome.download_seconds,
                   "previous_upload_seconds": self._previous_upload_seconds,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "slowdown": self.config.profile.slowdown, "virtual_seconds": outcome.virtual_seconds}
        return metrics

    def _virtual_seconds(self, outcome: TaskOutcome) -> float:
        """This task on the profile's hardware: fetch, compute x slowdown, upload (round trips)."""
        profile = self.config.profile
        down = profile.transfer_seconds(outcome.bytes_down) + profile.latency_s
        up = profile.transfer_seconds(outcome.bytes_up) + profile.latency_s if outcome.bytes_up else 0.0
        return down + outcome.compute_seconds * profile.slowdown + up

    def _emulate_compute(self, elapsed: float) -> None:
        factor = self.config.realtime_factor
        if factor > 0:
            extra = elapsed * self.config.profile.slowdown * factor - elapsed
            if extra > 0:
                time.sleep(extra)

    # --- files -----------------------------------------------------------------------------

    def fetch_blob(self, ref: dict, folder: str, suffix: str = "") -> Path:
        path = self.state_dir / folder / f"{ref['sha256']}{suffix}"
        self.client.download(ref["url"], ref["sha256"], path)
        return path

    def fetch_adapter(self, ref: dict, artifact_format: str) -> Path:
        """The task's start adapter: a ``.ptd`` for ExecuTorch, PEFT safetensors for ONNX Runtime."""
        expected = "ptd" if artifact_format == "executorch" else "safetensors"
        if ref.get("format") != expected:
            raise ProtocolError(0, "unsupported_format", f"a {artifact_format} artifact needs a {expected} start "
                                                         f"adapter, the task sent {ref.get('format')!r}")
        return self.fetch_blob(ref, "adapters", f".{expected}")

    def fetch_artifact(self, artifact: dict) -> tuple[Path, dict]:
        """The artifact's manifest and device files under ``artifacts/<manifest sha256>/``."""
        if artifact.get("format") not in self.config.runtimes:
            raise ProtocolError(0, "unsupported_format", f"artifact format {artifact.get('format')!r} is not one of "
                                                         f"this device's runtimes {list(self.config.runtimes)}")
        root = self.state_dir / "artifacts" / artifact["sha256"]
        self.client.download(artifact["url"], artifact["sha256"], root / "manifest.json")
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("format") != artifact["format"]:
            raise IntegrityError(f"the task announced a {artifact['format']} artifact, its manifest says "
                                 f"{manifest.get('format')!r}")
        for entry in artifact["files"]:
            relative = PurePosixPath(entry["path"])
            if relative.is_absolute() or ".." in relative.parts:
                raise IntegrityError(f"artifact file path {entry['path']!r} escapes the artifact directory")
            listed = manifest["files"].get(entry["path"])
            if listed is None or listed["sha256"] != entry["sha256"]:
                raise IntegrityError(f"{entry['path']}: the task's sha256 is not the manifest's")
            self.client.download(entry["url"], entry["sha256"], root / relative)
        return root, manifest

    def _tokenizer(self, artifact_dir: Path, manifest: dict):
        key = str(artifact_dir)
        if key not in self._tokenizers:
            from transformers import AutoTokenizer

            from models.batching import pad_token_id

            tokenizer = AutoTokenizer.from_pretrained(artifact_dir / manifest["tokenizer"]["dir"])
            if pad_token_id(tokenizer) != manifest["tokenizer"]["pad_token_id"]:
                raise IntegrityError("the artifact's tokenizer pads with another id than its manifest says")
            self._tokenizers[key] = tokenizer
        return self._tokenizers[key]
