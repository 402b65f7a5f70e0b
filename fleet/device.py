"""One PocketTune device: register, fetch verified artifacts, train in its runtime, upload.

The device loop (:meth:`DeviceAgent.run`):

1. register once (the token is kept in ``<state>/device.json``), reporting capabilities it
   measured itself (matmul GFLOP/s) or that its simulated profile sets (RAM, bandwidth);
2. ask for a task; with none, wait as long as the coordinator suggests (heartbeating);
3. fetch the artifact's manifest and device files and the round's global adapter, each
   sha256-checked, into a content-addressed cache (a file already there is not fetched
   again; an interrupted fetch resumes);
4. train the artifact on this round's slice of its local data, tokenized exactly as the task
   (and the manifest's tokenizer) says, in the runtime its format names (``fleet/runtimes/``;
   the device declares which runtimes it has, e.g. ``executorch``, ``onnxruntime``, or both in
   order of preference);
5. upload the adapter's new values and the metrics (losses, time, bytes, FLOPs and FLOP
   utilization); ``already_submitted`` after a lost answer counts as done.

A coordinator that is down or restarting is waited out with backoff (``fleet.transport``);
a file whose sha256 does not match is refused and the task is not trained.

Steps 3-4 (:meth:`DeviceAgent.train_task`) and 5 (:meth:`DeviceAgent.upload`) are separate so
that the simulator can train a round's devices in any order on the host and deliver their
results in the order of their virtual finish times (``fleet/simulator.py``).

**Two clocks.** A device measures its wall time (``compute_seconds``, ``download_seconds``,
``flop_utilization`` against the host's measured matmul peak: how well the runtime uses this
machine). A *simulated* device (``DeviceConfig.simulated``: the simulator's, or ``--profile``
other than ``native``) also costs the task on its profile's virtual clock from counted FLOPs and
bytes only (``fleet/virtual_clock.py``), and that is all the coordinator hears from it: the
capabilities it registers (``gflops``: the profile's peak) and the times and rates in its
results are the profile's, so the coordinator's decisions do not depend on the host's load
either. Whether and after which step it drops out is a draw from its seed and the round
(:func:`dropout_step`), not from the order it happened to be served in.

**The frozen-prefix cache lives as long as the device** (one per prefix program, by sha256),
not per task, so a device computes an example's prefix once across rounds. Simulated devices
may share one cache directory (``DeviceConfig.shared_prefix_cache``); then the host computes an
example once for all of them, but each device's virtual clock is still charged the prefix
passes a real phone would run: every example it had not had before (``prefix_charged``).
"""

from __future__ import annotations

import gzip
import json
import logging
import platform as platform_module
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from export.formats import DEFAULT_FORMAT, get_format
from export.manifest import program_batch_shape
from fleet.data import LocalData, round_examples
from fleet.hardware import measure_matmul_gflops, task_flops, training_flops, utilization
from fleet.profiles import PROFILES, DeviceProfile
from fleet.runtimes import get_runtime, runtime_names
from fleet.shared_downloads import SharedDownloads, is_sha256
from fleet.transport import CoordinatorClient, IntegrityError, ProtocolError, RetryPolicy
from fleet.update_encoding import encode_update
from fleet.virtual_clock import program_kind, task_cost
from models.rank_pruning import RankSelfPruning
from models.update_codecs import codec_names, get_codec
from models.update_privacy import UpdatePrivacy, privatize
from models.tier import LOCAL_SAMPLINGS

if TYPE_CHECKING:
    from fleet.prefix_cache import PrefixCache

log = logging.getLogger(__name__)

#: The runtime a device declares when it names none (the default artifact format).
RUNTIME = DEFAULT_FORMAT
#: The on-device training runtimes this Python device can drive (``fleet/runtimes/``; the
#: artifact formats of the same names).
RUNTIMES = runtime_names()
#: The optimizers it trains with on either runtime: SGD, and AdamW (stepped over the ExecuTorch
#: runtime's own tensors, or compiled into the ONNX Runtime optimizer model).
OPTIMIZERS = ("sgd", "adamw")
#: What it does to an update for a differentially private job (models/update_privacy.py).
PRIVACY_STEPS = ("clip", "local_noise")
STATE_FILE = "device.json"


def default_platform(runtime: str = RUNTIME) -> str:
    return f"python-{runtime}/{platform_module.system().lower()}-{platform_module.machine()}"


def dropout_step(seed: int, round_number: int, steps: int, dropout: float) -> int | None:
    """The step at which a device with ``seed`` drops out of ``round_number`` (None: it does not).

    A pure function of the device's seed and the round: the same seeded simulation drops the
    same devices at the same steps however the host orders or times their work (a draw from a
    generator shared across tasks would depend on which tasks a device happened to get).
    """
    if dropout <= 0 or steps < 1:
        return None
    rng = random.Random(f"pockettune-dropout/{seed}/{round_number}")
    return rng.randrange(steps) if rng.random() < dropout else None


@dataclass
class TaskOutcome:
    """What happened to one task on this device (the simulator aggregates these)."""

    device: str
    task_id: int
    job_id: int
    round: int
    #: trained (not uploaded yet) | accepted | cut (uploaded after its round closed: 409 round_closed
    #: or late) | dropped | rejected:<code> | refused_artifact | failed
    status: str
    profile: str = "native"
    num_examples: int = 0
    loss_before: float | None = None
    loss_after: float | None = None
    #: measured on the host (wall time inside the runtime's steps; the whole training; transfers)
    compute_seconds: float = 0.0
    train_seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    download_seconds: float = 0.0
    upload_seconds: float = 0.0
    flops_per_step: float = 0.0
    steps: int = 0
    #: measured: FLOPs over measured compute time, and that over the host's measured matmul peak
    achieved_gflops: float = 0.0
    peak_gflops: float = 0.0
    flop_utilization: float = 0.0
    #: measured on the host: examples whose frozen-prefix output was computed for this task (not
    #: found in the cache). With a shared cache it may be smaller than ``prefix_charged``: another
    #: simulated device computed them
    prefix_computed: int = 0
    #: virtual clock: examples of this task whose prefix THIS device had not had before, i.e.
    #: the prefix passes a real phone with its own cache would run now (what ``task_flops``
    #: counts); it depends on the device's own task history only, never on what the host's
    #: caches happen to hold
    prefix_charged: int = 0
    #: the configurator's label for this task's tier (None: the job's own tier)
    arm: str | None = None
    #: the part of ``bytes_down`` that was the artifact (program, data, tokenizer): paid once per
    #: tier a device is given, unlike the adapter every task fetches
    artifact_bytes_down: int = 0
    #: files this task fetched (each a request on the virtual clock; cached files are not fetched)
    files_fetched: int = 0
    #: ``fleet.virtual_clock.program_kind`` of the artifact (which sustained rate applies)
    program_kind: str | None = None
    #: the virtual clock (``fleet/virtual_clock.py``): counted work at the profile's rates and
    #: link; nothing measured on the host. ``virtual_seconds`` is their sum, the task's virtual
    #: finish time counted from the round's start (for a dropout: when it vanished)
    virtual_download_seconds: float = 0.0
    virtual_compute_seconds: float = 0.0
    virtual_upload_seconds: float = 0.0
    virtual_seconds: float = 0.0
    #: counted FLOPs of the whole task (steps, loss pass and prefix passes)
    task_flops: float = 0.0
    #: the artifact format (training runtime) of the task, e.g. executorch or onnxruntime
    runtime: str | None = None
    #: the loss on the batch held out of training (``probe_split``), before and after the task
    #: (None unless the task asked: ``train.probe_loss``)
    probe_loss_before: float | None = None
    probe_loss_after: float | None = None
    #: HetLoRA rank self-pruning (``models/rank_pruning.py``): whether this task pruned the
    #: tail of the device's rank (None: the task did not ask for self-pruning)
    rank_pruned: bool | None = None
    #: DP jobs: the update's change before it was clipped (kept here, never sent: the
    #: guarantee covers the clipped update only)
    update_norm_before_clip: float | None = None
    detail: str = ""
    started_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainedTask:
    """A task trained and not yet uploaded: its offer, its outcome so far and the update's bytes."""

    task: dict
    outcome: TaskOutcome
    update: bytes | None = None
    #: ``update`` is the gzip-compressed safetensors file (sent as ``application/gzip``)
    gzipped: bool = False


@dataclass
class DeviceConfig:
    coordinator: str
    state_dir: Path
    data: LocalData
    enrollment_key: str | None = None
    name: str = "device"
    platform: str = field(default_factory=default_platform)
    profile: DeviceProfile = PROFILES["native"]
    #: report the profile's virtual clock and capabilities to the coordinator (a simulated
    #: phone) rather than this machine's measurements (a real device)
    simulated: bool = False
    #: seeds this device's dropout draws (with the round) and its retry jitter
    seed: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: the host's matmul peak, measured once at start (for measured utilization; a real
    #: device also reports it); tests pass a number to skip the 0.3 s micro-benchmark
    peak_gflops: float | None = None
    #: training runtimes this device declares, in order of preference (the coordinator sends
    #: artifacts in one of these formats)
    runtimes: tuple[str, ...] = (RUNTIME,)
    #: intra-op threads for the ONNX Runtime session (0: one per core); ExecuTorch's threadpool
    #: is process-wide and set with ``fleet.runtime_executorch.set_runtime_threads``
    threads: int = 0
    #: a frozen-prefix cache directory shared with other (simulated) devices on this host:
    #: write-through, one cache object per process (``fleet.prefix_cache.shared_prefix_cache``).
    #: None: the device's own cache, under ``<state_dir>/prefix_cache`` (a real phone's way)
    shared_prefix_cache: Path | None = None
    #: a directory of artifact files shared with other (simulated) devices on this host
    #: (``fleet.shared_downloads``): host time only, the bytes are still counted as this
    #: device's download. None: every file over this device's own connection
    shared_downloads: Path | None = None

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
        config.profile.validate()
        self.client = CoordinatorClient(config.coordinator, retry=config.retry, seed=config.seed)
        self.device_id: int | None = None
        self.heartbeat_interval_s = 30.0
        self._measured_gflops = config.peak_gflops
        self._abandoned: set[int] = set()     # tasks this device dropped out of (it stays away)
        self._finished: set[int] = set()
        self._previous_upload_seconds: float | None = None
        self._tokenizers: dict[str, object] = {}
        self._prefix_caches: dict[str, PrefixCache] = {}    # by prefix version: kept across tasks
        self._prefix_seen: dict[str, set[str]] = {}         # example keys this device has had, by version
        self._shared = SharedDownloads(config.shared_downloads) if config.shared_downloads is not None else None
        #: bytes and files taken from the host's shared copy: downloaded as far as anyone but the host can tell
        self._shared_bytes, self._shared_files = 0, 0
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
    def host_peak_gflops(self) -> float:
        """This machine's measured matmul peak (the denominator of measured utilization)."""
        if self._measured_gflops is None:
            self._measured_gflops = measure_matmul_gflops()
        return self._measured_gflops

    @property
    def peak_gflops(self) -> float:
        """The matmul peak the device reports: its profile's constant when simulated, else measured."""
        if self.config.simulated:
            return self.config.profile.peak_gflops
        return self.host_peak_gflops / self.config.profile.slowdown

    def capabilities(self) -> dict:
        profile = self.config.profile
        return {"ram_mb": int(profile.ram_mb), "cores": 1, "gflops": round(self.peak_gflops, 3),
                "bandwidth_mbps": float(profile.bandwidth_mbps), "runtimes": list(self.config.runtimes),
                "optimizers": list(OPTIMIZERS), "privacy": list(PRIVACY_STEPS),
                "update_encodings": [name for name in codec_names() if name != "fp32"]}

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
        task, _, retry_after = self.ask()
        if task is None:
            return None, retry_after
        return self.do_task(task), 0.0

    def ask(self) -> tuple[dict | None, str, float]:
        """(task, "", 0) or (None, the coordinator's reason, seconds to wait before asking again).

        A task this device dropped out of, or already finished, is not taken again: it stays
        away for the round.
        """
        task, reason, retry_after = self.client.next_task()
        if task is None:
            log.debug("%s: no task (%s)", self.config.name, reason)
            return None, reason, retry_after or 2.0
        if task["task_id"] in self._abandoned or task["task_id"] in self._finished:
            return None, "this device left the task's round", 1.0
        return task, "", 0.0

    # --- one task --------------------------------------------------------------------------

    def do_task(self, task: dict) -> TaskOutcome:
        """Train ``task`` and upload its result at once (a real device's way)."""
        trained = self.train_task(task)
        return self.upload(trained) if trained.outcome.status == "trained" else trained.outcome

    def train_task(self, task: dict) -> "TrainedTask":
        """Fetch and train ``task``; the result is kept for :meth:`upload` (status ``trained``),
        or the outcome says why there is none (``dropped``, ``refused_artifact``)."""
        profile = self.config.profile
        outcome = TaskOutcome(device=self.config.name, task_id=task["task_id"], job_id=task["job_id"],
                              round=task["round"], status="", profile=profile.name, arm=task.get("arm"))
        before = (self._bytes_down(), self.client.transfers.seconds_down, self._files_fetched())
        try:
            artifact_dir, manifest = self.fetch_artifact(task["artifact"])
            outcome.runtime = manifest["format"]
            outcome.artifact_bytes_down = self._bytes_down() - before[0]
            adapter_path = self.fetch_adapter(task["adapter"], manifest["format"])
        except IntegrityError as exc:
            log.error("%s: %s", self.config.name, exc)
            self._abandoned.add(task["task_id"])
            outcome.status, outcome.detail = "refused_artifact", str(exc)
            return TrainedTask(task, outcome)
        outcome.bytes_down = self._bytes_down() - before[0]
        outcome.download_seconds = self.client.transfers.seconds_down - before[1]
        outcome.files_fetched = self._files_fetched() - before[2]
        outcome.program_kind = program_kind(manifest)
        outcome.flops_per_step = training_flops(manifest).total

        train = task["train"]
        batch, seq = program_batch_shape(manifest)
        if (train["batch"], train["seq"]) != (batch, seq):
            raise ProtocolError(0, "inconsistent_task", f"task says batch/seq {train['batch']}/{train['seq']}, "
                                                        f"the program was compiled for {batch}/{seq}")
        if task.get("dataset") != self.config.data.task.name:
            log.warning("%s: the job's dataset is %r; this device trains on its own %s", self.config.name,
                        task.get("dataset"), self.config.data.description)
        sampling = train.get("sampling", "sequential")
        if sampling not in LOCAL_SAMPLINGS:
            raise ProtocolError(0, "inconsistent_task", f"unknown local sampling {sampling!r}; this device "
                                                        f"knows {', '.join(LOCAL_SAMPLINGS)}")
        try:
            pruning = RankSelfPruning.from_train(train)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(0, "inconsistent_task", f"bad rank_self_pruning settings: {exc}") from None
        try:
            codec = get_codec((task.get("upload") or {}).get("encoding"))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(0, "inconsistent_task", f"bad upload encoding: {exc}") from None
        try:
            privacy = UpdatePrivacy.from_train(train)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(0, "inconsistent_task", f"bad privacy settings: {exc}") from None
        probe_wanted = train.get("probe_loss", False)
        if not isinstance(probe_wanted, bool):
            raise ProtocolError(0, "inconsistent_task", f"train.probe_loss must be true or false, got {probe_wanted!r}")
        steps = int(train["steps"])
        drop_at = dropout_step(self.config.seed, task["round"], steps, profile.dropout)

        started = time.perf_counter()
        tokenizer = self._tokenizer(artifact_dir, manifest)
        trainable, probe_examples = probe_split(self.config.data.examples, batch, probe_wanted)
        examples = round_examples(trainable, task["round"], steps, batch, sampling)
        batches = self.config.data.task.batches(tokenizer, examples, batch, seq)
        probe = self.config.data.task.batches(tokenizer, probe_examples, batch, seq)[0] if probe_examples else None
        # the frozen prefix (and its charge) covers the probe batch too
        prefix_batches = batches + [probe] if probe is not None else batches
        trainer = self._trainer(artifact_dir, manifest, adapter_path, train)
        start_adapter = read_adapter(adapter_path) if pruning is not None else None
        compute, losses = 0.0, []
        if getattr(trainer, "prefix", None) is not None:
            # The frozen prefix of this round's examples, computed once (cached across rounds).
            computed_before = trainer.prefix.stats.computed     # the cache outlives this task
            t0 = time.perf_counter()
            trainer.prepare(prefix_batches)
            compute += time.perf_counter() - t0
            outcome.prefix_computed = trainer.prefix.stats.computed - computed_before
            outcome.prefix_charged = self._charge_prefix(trainer.prefix.version, prefix_batches)
        if probe is not None:
            t0 = time.perf_counter()
            outcome.probe_loss_before = trainer.loss(*probe)
            compute += time.perf_counter() - t0
        for step, (ids, labels) in enumerate(batches):
            if drop_at is not None and step == drop_at:
                self._abandoned.add(task["task_id"])
                outcome.status, outcome.compute_seconds = "dropped", compute
                outcome.steps = step + (1 if probe is not None else 0)     # the probe's first pass ran too
                outcome.detail = f"dropped out after {step} of {steps} steps"
                self._cost(outcome, manifest)
                log.info("%s: %s (task %s)", self.config.name, outcome.detail, task["task_id"])
                return TrainedTask(task, outcome)
            t0 = time.perf_counter()
            losses.append(trainer.step(ids, labels))
            if pruning is not None:     # the penalty on the rank's tail, as its own step
                current = trainer.adapter_tensors()
                changed = pruning.penalty_step(current, float(train["lr"]))
                if changed:
                    trainer.load_adapter({**current, **changed})
            compute += time.perf_counter() - t0
        t0 = time.perf_counter()
        loss_after = trainer.loss(*batches[0])   # the first batch again: the before/after pair is comparable
        if probe is not None:
            outcome.probe_loss_after = trainer.loss(*probe)
        compute += time.perf_counter() - t0
        outcome.train_seconds = time.perf_counter() - started
        # every pass is charged: the steps, the in-sample loss pass and the two probe passes
        outcome.compute_seconds, outcome.steps = compute, steps + 1 + (2 if probe is not None else 0)
        outcome.loss_before, outcome.loss_after = losses[0], loss_after
        outcome.num_examples = min(len(trainable), steps * batch)

        from safetensors.torch import save

        trained = trainer.adapter_tensors()
        if pruning is not None:
            outcome.rank_pruned = pruning.decide(start_adapter, trained)
            if outcome.rank_pruned:
                trained = pruning.pruned(trained)
        start = read_adapter(adapter_path) if privacy is not None or codec.sends_change else None
        if privacy is not None:     # before encoding: nothing after this may undo the clip or the noise
            trained, outcome.update_norm_before_clip = privatize(trained, start, privacy)
        gzipped = False
        if codec.sends_change:      # the change in the job's encoding, with error feedback
            residual = self.state_dir / "residuals" / f"job{task['job_id']}.safetensors"
            update = encode_update(trained, start, codec, residual)
            # A quantized or sparse change compresses further (fp32 trained values hardly do).
            packed = gzip.compress(update, compresslevel=9, mtime=0)
            if len(packed) < len(update):
                update, gzipped = packed, True
        else:
            update = save(trained)
        outcome.bytes_up = len(update)      # the bytes on the wire
        # Measured utilization: counted FLOPs over this machine's measured time and peak.
        outcome.peak_gflops = self.host_peak_gflops
        outcome.__dict__.update(utilization(outcome.flops_per_step, outcome.steps, compute, outcome.peak_gflops))
        self._cost(outcome, manifest)
        outcome.status = "trained"
        return TrainedTask(task, outcome, update, gzipped)

    def upload(self, trained: "TrainedTask") -> TaskOutcome:
        """Upload a trained result: ``accepted``, ``cut`` (its round had closed) or ``rejected:<code>``."""
        outcome, task = trained.outcome, trained.task
        if outcome.status != "trained" or trained.update is None:
            raise ValueError(f"task {outcome.task_id} has no result to upload ({outcome.status})")
        meta = {"num_examples": outcome.num_examples, "loss_before": outcome.loss_before,
                "loss_after": outcome.loss_after, "bytes_downloaded": outcome.bytes_down,
                "bytes_uploaded": outcome.bytes_up,
                "train_seconds": outcome.virtual_compute_seconds if self.config.simulated else outcome.compute_seconds,
                # ties the update to the adapter this task started from (the coordinator checks it)
                "start_adapter_sha256": task["adapter"]["sha256"],
                "metrics": self._metrics(outcome)}
        up_before = self.client.transfers.seconds_up
        try:
            self.client.upload_result(task["upload"]["url"], meta, trained.update, gzipped=trained.gzipped)
            outcome.status = "accepted"
        except ProtocolError as exc:
            # A result that reaches a round already closed (frozen at min_updates or at its
            # deadline) was cut from the round, like a straggler's; anything else is a rejection.
            cut = exc.code in ("round_closed", "late")
            outcome.status, outcome.detail = ("cut" if cut else f"rejected:{exc.code}"), exc.message
            log.info("%s: upload for task %s refused: %s", self.config.name, task["task_id"], exc)
        outcome.upload_seconds = self.client.transfers.seconds_up - up_before
        self._previous_upload_seconds = (outcome.virtual_upload_seconds if self.config.simulated
                                         else outcome.upload_seconds)
        self._finished.add(task["task_id"])
        trained.update = None
        return outcome

    def _cost(self, outcome: TaskOutcome, manifest: dict) -> None:
        """Put ``outcome`` on the profile's virtual clock: counted FLOPs and bytes, no host time."""
        outcome.task_flops = task_flops(manifest, outcome.steps, outcome.prefix_charged)
        cost = task_cost(self.config.profile, outcome.program_kind, outcome.task_flops, outcome.bytes_down,
                         outcome.files_fetched, outcome.bytes_up)
        outcome.virtual_download_seconds = cost.download_seconds
        outcome.virtual_compute_seconds = cost.compute_seconds
        outcome.virtual_upload_seconds = cost.upload_seconds
        outcome.virtual_seconds = cost.total

    def _charge_prefix(self, version: str, batches) -> int:
        """How many of these batches' distinct examples this device has not had under ``version``.

        What a real phone with its own cache would run the prefix program for now: the count
        the virtual clock charges, whoever on the host actually computed them.
        """
        from fleet.prefix_cache import PrefixCache

        keys = {PrefixCache.example_key(row) for ids, _ in batches for row in ids}
        seen = self._prefix_seen.setdefault(version, set())
        new = keys - seen
        seen |= new
        return len(new)

    def prefix_cache(self, artifact_dir: Path, manifest: dict) -> "PrefixCache | None":
        """This device's frozen-prefix cache for the artifact's prefix program (None: it has none).

        Kept across tasks, one per version; the shared one is the process's for that directory.
        """
        if not manifest.get("prefix"):
            return None
        from fleet.prefix_cache import PrefixCache, shared_prefix_cache

        version = PrefixCache.version_of(manifest)
        if version not in self._prefix_caches:
            shared = self.config.shared_prefix_cache
            self._prefix_caches[version] = (
                shared_prefix_cache(artifact_dir, manifest, Path(shared)) if shared is not None
                else PrefixCache.for_artifact(artifact_dir, manifest, self.state_dir / "prefix_cache"))
        return self._prefix_caches[version]

    def _trainer(self, artifact_dir: Path, manifest: dict, adapter_path: Path, train: dict):
        """The runtime the artifact's format calls for, loaded with the task's start adapter."""
        runtime = get_runtime(manifest["format"])
        mismatch = runtime.settings_mismatch(manifest, train)
        if mismatch is not None:
            raise ProtocolError(0, "inconsistent_task", mismatch)
        return runtime.trainer(artifact_dir, manifest, adapter_path, train, threads=self.config.threads,
                               cache_dir=self.state_dir / "prefix_cache",
                               prefix_cache=self.prefix_cache(artifact_dir, manifest))

    def _metrics(self, outcome: TaskOutcome) -> dict:
        """``meta.metrics``: a simulated device reports its profile's clock and rates, a real one
        what it measured (the coordinator schedules on them: they must not carry the host's load
        into a simulation)."""
        common = {"steps": outcome.steps, "flops_per_step": outcome.flops_per_step,
                  "previous_upload_seconds": self._previous_upload_seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "slowdown": self.config.profile.slowdown}
        if outcome.rank_pruned is not None:
            common["rank_pruned"] = outcome.rank_pruned
        if outcome.probe_loss_before is not None:
            common.update(probe_loss_before=outcome.probe_loss_before, probe_loss_after=outcome.probe_loss_after)
        common["artifact_bytes_downloaded"] = outcome.artifact_bytes_down
        if self.config.simulated:
            compute = outcome.virtual_compute_seconds
            achieved = outcome.task_flops / compute / 1e9 if compute > 0 else 0.0     # the profile's rate
            peak = self.peak_gflops
            return {**common, "compute_seconds": compute, "download_seconds": outcome.virtual_download_seconds,
                    "achieved_gflops": achieved, "peak_gflops": peak,
                    "flop_utilization": achieved / peak if peak > 0 else 0.0,
                    "virtual_seconds": outcome.virtual_seconds}
        return {**common, "compute_seconds": outcome.compute_seconds, "download_seconds": outcome.download_seconds,
                "achieved_gflops": outcome.achieved_gflops, "peak_gflops": outcome.peak_gflops,
                "flop_utilization": outcome.flop_utilization,
                # a real device's task took what it measured: its download and its compute
                "virtual_seconds": outcome.download_seconds + outcome.compute_seconds}

    # --- files -----------------------------------------------------------------------------

    def fetch_blob(self, ref: dict, folder: str, suffix: str = "") -> Path:
        path = self.state_dir / folder / f"{ref['sha256']}{suffix}"
        self.client.download(ref["url"], ref["sha256"], path)
        return path

    def fetch_adapter(self, ref: dict, artifact_format: str) -> Path:
        """The task's start adapter, in the encoding the format's runtime loads (a ``.ptd`` for
        ExecuTorch, PEFT safetensors for ONNX Runtime)."""
        expected = get_format(artifact_format).start_adapter_kind
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
            self._download_artifact_file(entry["url"], entry["sha256"], root / relative)
        return root, manifest

    def _download_artifact_file(self, url: str, sha256: str, dest: Path) -> None:
        """Download one artifact file, or take the host's shared copy of it (simulated devices)."""
        if self._shared is None or dest.is_file() or not is_sha256(sha256):
            self.client.download(url, sha256, dest)     # (a malformed digest fails its check there)
            return
        size = self._shared.link_into(sha256, dest)
        if size is not None:
            self._shared_bytes += size
            self._shared_files += 1
            return
        self.client.download(url, sha256, dest)     # verified against sha256 before it is kept
        self._shared.keep(sha256, dest)

    def _bytes_down(self) -> int:
        return self.client.transfers.bytes_down + self._shared_bytes

    def _files_fetched(self) -> int:
        return len(self.client.transfers.files_fetched) + self._shared_files

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


def probe_split(examples: list, batch: int, wanted: bool) -> tuple[list, list]:
    """(examples to train on, examples of the probe batch): the last ``batch`` examples of the
    shard are held out of training, the same every round, when the task asks for a probe and the
    shard can spare them (at least two batches left to train on); otherwise no probe.

    A probe the device also trained on would reward memorizing it (the loss on a batch just
    trained falls whatever the arm), which is what the in-sample pair measures.
    """
    if not wanted or len(examples) < 3 * batch:
        return list(examples), []
    return list(examples[:-batch]), list(examples[-batch:])


def read_adapter(path: Path) -> dict:
    """A start adapter file's tensors under PEFT keys, as torch tensors (``.ptd`` or safetensors,
    by the encoding :meth:`DeviceAgent.fetch_adapter` named it with)."""
    if Path(path).suffix == ".ptd":
        from export.executorch import read_adapter_ptd

        return read_adapter_ptd(path)
    from fleet.runtime_onnxruntime import read_start_adapter

    return read_start_adapter(path)
