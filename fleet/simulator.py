"""A heterogeneous fleet on one machine: N devices against a real coordinator over loopback.

Each simulated device is a full :class:`fleet.device.DeviceAgent` (its own registration,
token, cache, data shard, profile) that trains the real ExecuTorch (or ONNX Runtime) program.
Devices are spread over ``workers`` processes (one per core by default), each of which serves
its devices in turn, so 20 devices do not need 20 copies of the runtime in memory.

**The virtual clock decides, not the host.** Every task is costed on its device's profile from
counted FLOPs and bytes only (``fleet/virtual_clock.py``); nothing measured on the host enters
virtual time. And the order in which the host happens to finish the devices' work decides
nothing either: the simulator conducts each round in four steps,

1. **places**: it asks the coordinator for a task on each device's behalf, one device at a
   time, in an order drawn from the seed and the round (the coordinator gives places first
   come, first served, so concurrent asking would let process timing pick the participants);
2. **training**: the workers train their devices' tasks, in any order, and report each one's
   virtual finish time (download + compute + upload on the virtual clock, from the round's
   start) without uploading; whether and when a device drops out is a seeded draw
   (:func:`fleet.device.dropout_step`);
3. **delivery in virtual order**: the results are uploaded one at a time in order of virtual
   finish time. The coordinator's own rules then accept exactly what the virtual round would:
   the first ``min_updates`` by virtual finish time freeze the round, and every later result
   is refused (409 ``round_closed``) and reported as ``cut``. Once the virtual deadline has
   passed (a result finishes after it, or every result is in), the simulator closes the round
   itself (``POST /api/v1/jobs/<id>/rounds/<n>/close``), so later results are cut too and no
   round waits for the coordinator's real deadline; the round keeps the results that finished
   in virtual time;
4. the simulator waits for the coordinator to aggregate and open the next round.

Cut results are uploaded (and refused) rather than withheld, because that is what the
coordinator would see from real phones finishing after the round closed: the rejections it
logs, the bytes devices spent, and a round whose accepted set is exactly the virtual one.

Two clocks are reported per round: **real** (when the coordinator opened and closed it, this
machine, this run) and **virtual**: the virtual finish time of the last accepted update for a
round closed on ``min_updates``, the virtual deadline for one closed at its deadline. The
devices' measured times (compute, FLOP utilization on this host) are reported beside them and
never mixed in. The real deadline (``round_deadline_s``) must exceed the host's wall time for
a round: if the coordinator freezes a round before the results the virtual clock accepts have
arrived, the round is reported ``out_of_order`` (and a warning logged).

**A shared frozen-prefix cache** (``FleetSpec.shared_prefix_cache``, a directory): devices
training the same base program run the same prefix program on the same token ids, so the host
need compute an example's prefix once for the whole fleet. Devices served by one worker share
one cache object (its memory budget is per process); workers share through the directory
(every entry is written through to disk). Each task's ``prefix_computed`` is what the host
computed for it and may be 0 when another device got there first; its ``prefix_charged``, the
examples this device had not had before, is what its virtual clock pays for, as a phone with
its own cache would, so sharing moves host time only, never virtual time.

**Shared downloads** (``FleetSpec.shared_downloads``, a directory; ``fleet.shared_downloads``):
the host downloads each artifact file once for the whole fleet and every other device links it.
Each device still counts the file's bytes and request as its own download, in what it reports
to the coordinator and on its virtual clock.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import queue
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.formats import DEFAULT_FORMAT
from export.formats.onnxruntime import OnnxRuntimeFormat
from fleet.profiles import DeviceProfile, fleet_profiles
from fleet.transport import CoordinatorClient, RetryPolicy
from models.eval_schedule import is_evaluated_round

log = logging.getLogger(__name__)

FINAL_STATUSES = ("completed", "failed", "cancelled")
#: A no-task reason that clears by itself (the coordinator is exporting the device's format):
#: the simulator asks again for the same device before moving on, so places stay in seed order.
TRANSIENT_NO_TASK = ("being exported",)


@dataclass
class FleetSpec:
    """Everything that defines a simulated run (saved with its report)."""

    devices: int = 8
    fleet: str = "mixed"
    rounds: int = 3
    task: str = "bbcnews"
    partition: str = "iid"
    seed: int = 0
    dropout: float = 0.0
    workers: int = 2
    devices_per_round: int | None = None     # None: every device
    min_updates: int | None = None           # None: 75% of devices_per_round
    round_deadline_s: float = 300.0          # the coordinator's (real) deadline
    virtual_deadline_s: float | None = None  # the round's deadline on the virtual clock; None: round_deadline_s
    job: dict = field(default_factory=dict)  # model, tier, local_steps, lr, strategy, eval_examples ...
    #: how many devices run ONNX Runtime instead of ExecuTorch (chosen by seed across profiles)
    onnxruntime_devices: int = 0
    #: a frozen-prefix cache directory every simulated device shares (host time only; each device
    #: is still charged its own prefix passes on the virtual clock). None: one cache per device
    shared_prefix_cache: str | None = None
    #: a directory of artifact files every simulated device shares (``fleet.shared_downloads``:
    #: host time only; each device still counts and is charged its own download). None: each
    #: device downloads every file itself
    shared_downloads: str | None = None

    def places(self) -> tuple[int, int]:
        per_round = self.devices_per_round or self.devices
        return per_round, self.min_updates or max(1, math.ceil(0.75 * per_round))

    @property
    def virtual_deadline(self) -> float:
        return self.virtual_deadline_s if self.virtual_deadline_s is not None else self.round_deadline_s


def virtual_order(outcomes: list[dict]) -> list[dict]:
    """Trained results in the order they reach the coordinator on the virtual clock (ties: by name)."""
    return sorted((o for o in outcomes if o["status"] == "trained"), key=lambda o: (o["virtual_seconds"], o["device"]))


def planned_membership(outcomes: list[dict], min_updates: int, virtual_deadline_s: float) -> tuple[list[str], str]:
    """Which devices' results a round accepts on the virtual clock, and why it closes.

    The first ``min_updates`` by virtual finish time if the last of them finishes by the
    deadline (``min_updates``); otherwise every one that finishes by the deadline (``deadline``).
    What the simulator's delivery makes the coordinator do, stated on its own (tests, reports).
    """
    ordered = virtual_order(outcomes)
    if len(ordered) >= min_updates and ordered[min_updates - 1]["virtual_seconds"] <= virtual_deadline_s:
        return [o["device"] for o in ordered[:min_updates]], "min_updates"
    return [o["device"] for o in ordered if o["virtual_seconds"] <= virtual_deadline_s], "deadline"


def deliver_in_virtual_order(results: list[dict], upload, virtual_deadline_s: float, close_now) -> list[dict]:
    """Upload a round's trained results one at a time in virtual finish order; the final outcomes.

    ``upload(outcome)`` uploads one device's result and returns its final outcome;
    ``close_now(job_id, round)`` makes the coordinator close the round with what it has (the
    virtual deadline has passed), unless it is closed already. The coordinator's own rule
    (freeze at ``min_updates`` accepted) accepts the first ``min_updates`` by virtual time and
    refuses the rest (``cut``); a result finishing after the virtual deadline is sent only once
    the round is closed, so it is cut too; and a round that got fewer than ``min_updates`` by
    the virtual deadline is closed then, without waiting for the coordinator's real deadline.
    """
    final, closed = [], set()
    for outcome in virtual_order(results):
        key = (outcome["job_id"], outcome["round"])
        if outcome["virtual_seconds"] > virtual_deadline_s and key not in closed:
            close_now(*key)
            closed.add(key)
        final.append(upload(outcome))
    for key in {(o["job_id"], o["round"]) for o in results} - closed:
        close_now(*key)
    return final


# --- worker processes --------------------------------------------------------------------------

def _worker(base_url: str, enrollment_key: str, device_specs: list[dict], fleet_seed: int, commands, replies,
            peak_gflops: float | None, log_path: str, runtime_threads: int) -> None:
    """Serve the parent's commands for several devices until told to stop.

    ``register``/``ask``/``upload`` name one device; ``train`` names the devices to train, in
    order. Every command is answered on ``replies`` (``train``: once per device).
    """
    # The devices' logs (and the runtime's own stderr chatter, the runtime's import included)
    # go to the run folder, not the terminal that shows the fleet's progress.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    from fleet.runtimes import get_runtime, runtime_names
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    # The workers share the machine's cores: each runtime's threadpool gets its share, not all of them.
    for runtime in runtime_names():
        get_runtime(runtime).set_threads(runtime_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    from fleet.data import LocalData
    from fleet.device import RUNTIME, DeviceAgent, DeviceConfig, TaskOutcome, default_platform
    from models.tasks import PartitionSpec

    agents = {}
    for spec in device_specs:
        data = LocalData.from_task(spec["task"], spec["shard"], spec["num_shards"],
                                   PartitionSpec.parse(spec["partition"], seed=fleet_seed))
        agents[spec["name"]] = DeviceAgent(DeviceConfig(
            coordinator=base_url, state_dir=Path(spec["state_dir"]), data=data, enrollment_key=enrollment_key,
            name=spec["name"], profile=DeviceProfile(**spec["profile"]), simulated=True,
            seed=spec["seed"], retry=RetryPolicy(give_up_after_s=120.0), peak_gflops=peak_gflops,
            runtimes=tuple(spec.get("runtimes", [RUNTIME])),
            platform=default_platform(spec.get("runtimes", [RUNTIME])[0]),
            threads=runtime_threads,
            shared_prefix_cache=Path(spec["shared_prefix_cache"]) if spec.get("shared_prefix_cache") else None,
            shared_downloads=Path(spec["shared_downloads"]) if spec.get("shared_downloads") else None))
    held: dict[str, dict] = {}         # tasks given, not trained yet
    trained: dict = {}                 # TrainedTask by device, not uploaded yet
    replies.put(("ready", None, sorted(agents)))
    while True:
        command, arg = commands.get()
        if command == "stop":
            return
        names = arg if command == "train" else [arg]
        for name in names:
            agent = agents[name]
            try:
                if command == "register":
                    replies.put(("registered", name, agent.ensure_registered()))
                elif command == "ask":
                    task, reason, _ = agent.ask()
                    if task is not None:
                        held[name] = task
                    summary = None if task is None else {k: task[k] for k in ("task_id", "job_id", "round")}
                    replies.put(("asked", name, {"task": summary, "reason": reason}))
                elif command == "train":
                    task = held.pop(name)
                    try:
                        result = agent.train_task(task)
                    except Exception as exc:  # one device's failure must not stop the fleet
                        log.warning("%s: %s", name, exc)
                        result = None
                        outcome = TaskOutcome(device=name, task_id=task["task_id"], job_id=task["job_id"],
                                              round=task["round"], status="failed", profile=agent.config.profile.name,
                                              detail=f"{type(exc).__name__}: {exc}")
                    if result is not None:
                        outcome = result.outcome
                        if outcome.status == "trained":
                            trained[name] = result
                    replies.put(("trained", name, outcome.to_dict()))
                elif command == "upload":
                    result = trained.pop(name)
                    try:
                        outcome = agent.upload(result)
                    except Exception as exc:
                        log.warning("%s: upload failed: %s", name, exc)
                        outcome = result.outcome
                        outcome.status, outcome.detail = "failed", f"upload: {type(exc).__name__}: {exc}"
                    replies.put(("uploaded", name, outcome.to_dict()))
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:
                log.exception("%s: %s failed", name, command)
                replies.put(("error", name, f"{command}: {type(exc).__name__}: {exc}"))


# --- the run -----------------------------------------------------------------------------------

@dataclass
class RoundReport:
    round: int
    real_seconds: float | None
    virtual_seconds: float | None
    close_reason: str | None
    accepted: int
    dropped: int
    rejected: int
    bytes_down: int
    bytes_up: int
    mean_loss_before: float | None
    mean_loss_after: float | None
    #: measured on the host: the runtime's FLOP utilization and its compute seconds (all tasks)
    mean_flop_utilization: float | None
    metric: str | None = None
    value: float | None = None
    #: the evaluation's 95% interval ([lo, hi]) when the coordinator gives one
    ci95: list[float] | None = None
    #: results that finished after the round had closed on the virtual clock (uploaded, refused)
    cut: int = 0
    #: whose updates the round accepted, in virtual finish order
    accepted_devices: list[str] = field(default_factory=list)
    measured_compute_seconds: float = 0.0
    #: results the coordinator accepted or refused against the virtual plan (its real deadline
    #: came first); 0 in a faithful run
    out_of_order: int = 0


def evaluation_of(job: dict, round_number: int) -> dict | None:
    """The coordinator's evaluation of the global adapter after ``round_number`` (0: initial)."""
    for entry in job.get("round_history", []):
        if entry.get("round") == round_number:
            return entry.get("evaluation")
    if round_number == 0:
        return job.get("initial_evaluation") or (job.get("initial_adapter") or {}).get("evaluation")
    return None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds between two of the coordinator's ISO 8601 timestamps (``...Z``)."""
    from datetime import datetime

    if not start or not end:
        return None
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def round_reports(job: dict, outcomes: list[dict], virtual_deadline_s: float,
                  plans: dict[int, dict] | None = None) -> list[RoundReport]:
    reports = []
    for entry in job.get("round_history", []):
        if entry.get("status") != "closed":
            continue
        number = entry["round"]
        mine = [o for o in outcomes if o["job_id"] == job["job_id"] and o["round"] == number]
        accepted = sorted((o for o in mine if o["status"] == "accepted"),
                          key=lambda o: (o["virtual_seconds"], o["device"]))
        if entry.get("close_reason") in ("deadline", "admin"):   # admin: closed at the virtual deadline
            virtual = virtual_deadline_s
        else:
            virtual = max((o["virtual_seconds"] for o in accepted), default=0.0)
        plan = (plans or {}).get(number)
        out_of_order = 0
        if plan is not None:
            out_of_order = len(set(plan["accepted"]) ^ {o["device"] for o in accepted})
        evaluation = evaluation_of(job, number) or {}
        reports.append(RoundReport(
            round=number, real_seconds=_seconds_between(entry.get("opened_at"), entry.get("closed_at")),
            virtual_seconds=virtual, close_reason=entry.get("close_reason"), accepted=len(accepted),
            dropped=sum(o["status"] == "dropped" for o in mine),
            rejected=sum(o["status"].startswith("rejected") or o["status"] in ("refused_artifact", "failed")
                         for o in mine),
            bytes_down=sum(o["bytes_down"] for o in mine), bytes_up=sum(o["bytes_up"] for o in mine),
            mean_loss_before=_mean([o["loss_before"] for o in accepted]),
            mean_loss_after=_mean([o["loss_after"] for o in accepted]),
            mean_flop_utilization=_mean([o["flop_utilization"] for o in accepted]),
            metric=evaluation.get("metric"), value=evaluation.get("value"), ci95=evaluation.get("ci95"),
            cut=sum(o["status"] == "cut" for o in mine), accepted_devices=[o["device"] for o in accepted],
            measured_compute_seconds=sum(o["compute_seconds"] for o in mine), out_of_order=out_of_order))
    return reports


class FleetSimulation:
    """Create the job, conduct the fleet round by round until the job ends and every round is
    evaluated, report."""

    def __init__(self, spec: FleetSpec, base_url: str, admin_token: str, enrollment_key: str, workdir: Path,
                 progress: bool = True):
        self.spec, self.workdir = spec, Path(workdir)
        self.base_url, self.enrollment_key = base_url, enrollment_key
        self.admin = CoordinatorClient(base_url, token=admin_token, retry=RetryPolicy(give_up_after_s=120.0))
        self.progress = progress
        self.outcomes: list[dict] = []
        #: per round: the devices that got places (in asking order) and the virtual plan
        self.plans: dict[int, dict] = {}
        self.job: dict = {}
        self._deadline = math.inf

    def create_job(self) -> dict:
        per_round, min_updates = self.spec.places()
        body = {"task": self.spec.task, "rounds": self.spec.rounds, "devices_per_round": per_round,
                "min_updates": min_updates, "round_deadline_s": self.spec.round_deadline_s, **self.spec.job}
        body.setdefault("model", "tiny")
        return self.admin.json("POST", "api/v1/jobs", body)

    def job_state(self, job_id: int) -> dict:
        return self.admin.json("GET", f"api/v1/jobs/{job_id}")

    def device_specs(self) -> list[dict]:
        profiles = fleet_profiles(self.spec.fleet, self.spec.devices, dropout=self.spec.dropout, seed=self.spec.seed)
        onnxruntime = set(random.Random(self.spec.seed).sample(range(self.spec.devices),
                                                                min(self.spec.onnxruntime_devices, self.spec.devices)))
        return [{"name": f"sim-{i + 1:03d}-{p.name}" + ("-ort" if i in onnxruntime else ""), "profile": p.to_dict(),
                 "shard": i, "num_shards": self.spec.devices, "task": self.spec.task, "partition": self.spec.partition,
                 "state_dir": str(self.workdir / "devices" / f"sim-{i + 1:03d}"), "seed": self.spec.seed * 1000 + i,
                 "runtimes": [OnnxRuntimeFormat.name] if i in onnxruntime else [DEFAULT_FORMAT],
                 "shared_prefix_cache": self.spec.shared_prefix_cache,
                 "shared_downloads": self.spec.shared_downloads} for i, p in enumerate(profiles)]

    def run(self, timeout_s: float = 3600.0) -> dict:
        from tqdm import tqdm

        from fleet.hardware import measure_matmul_gflops

        started = time.monotonic()
        self._deadline = started + timeout_s
        self.workdir.mkdir(parents=True, exist_ok=True)
        job = self.create_job()
        job_id = job["job_id"]
        bar = tqdm(total=self.spec.rounds, desc="preparing artifact", unit="round", disable=not self.progress)
        while job["status"] == "preparing":
            self._check_time(job_id)
            time.sleep(1.0)
            job = self.job_state(job_id)
        if job["status"] != "running":
            bar.close()
            raise RuntimeError(f"job {job_id} is {job['status']}: {job.get('error')}")
        # One matmul benchmark for the whole fleet (measured utilization only: never virtual time).
        peak = measure_matmul_gflops()
        context = mp.get_context("spawn")
        specs = self.device_specs()
        count = min(self.spec.workers, len(specs))
        threads = max(1, (os.cpu_count() or 1) // max(1, count))
        self._replies = context.Queue()
        self._commands = [context.Queue() for _ in range(count)]
        self._owner = {spec["name"]: i % count for i, spec in enumerate(specs)}
        self._names = [spec["name"] for spec in specs]
        self._workers = [context.Process(target=_worker, args=(
            self.base_url, self.enrollment_key, specs[w::count], self.spec.seed, self._commands[w], self._replies,
            peak, str(self.workdir / "devices.log"), threads), daemon=True) for w in range(count)]
        for worker in self._workers:
            worker.start()
        try:
            for _ in self._workers:
                self._reply("ready", job_id)
            # Registered one at a time, in spec order: the same device ids in every run.
            for name in self._names:
                self._command(name, "register", name)
                self._reply("registered", job_id)
            bar.set_description("training")
            done: set[int] = set()
            while True:
                job = self.job_state(job_id)
                closed = sum(e["status"] == "closed" for e in job.get("round_history", []))
                bar.n = closed
                last = self._last_value(job)
                bar.set_postfix_str(f"updates {sum(o['status'] == 'accepted' for o in self.outcomes)}"
                                    + (f", {last}" if last else ""))
                bar.refresh()
                if job["status"] in FINAL_STATUSES:
                    if self._evaluated(job):
                        break
                elif job["status"] == "running" and job.get("current_round") not in (None, *done):
                    number = job["current_round"]
                    self._run_round(job, number)
                    done.add(number)
                    continue
                self._check_time(job_id)
                time.sleep(0.2)
        finally:
            for commands in self._commands:
                commands.put(("stop", None))
            for worker in self._workers:
                worker.join(30)
                if worker.is_alive():
                    worker.terminate()
            bar.close()
        self.job = job
        reports = round_reports(job, self.outcomes, self.spec.virtual_deadline, self.plans)
        for r in reports:
            if r.out_of_order:
                log.warning("round %s: the coordinator's accepted set differs from the virtual clock's in %s "
                            "device(s); its real deadline (%s s) came first: raise --round-deadline",
                            r.round, r.out_of_order, self.spec.round_deadline_s)
        from fleet.virtual_clock import REFERENCE_PEAK_GFLOPS, REFERENCE_SUSTAINED_GFLOPS

        return {"spec": asdict(self.spec), "job_id": job_id, "status": job["status"],
                "wall_seconds": time.monotonic() - started, "peak_gflops": peak,
                "virtual_clock": {"reference_sustained_gflops": dict(REFERENCE_SUSTAINED_GFLOPS),
                                  "reference_peak_gflops": REFERENCE_PEAK_GFLOPS,
                                  "virtual_deadline_s": self.spec.virtual_deadline},
                "initial_evaluation": evaluation_of(job, 0), "rounds": [asdict(r) for r in reports],
                "virtual_seconds": sum(r.virtual_seconds or 0 for r in reports),
                "accepted_by_runtime": accepted_by_runtime(self.outcomes), "outcomes": self.outcomes}

    # --- one round, conducted ----------------------------------------------------------------

    def _run_round(self, job: dict, number: int) -> None:
        job_id, per_round = job["job_id"], job["devices_per_round"]
        # 1. places, one device at a time in the seed's order for this round
        order = list(self._names)
        random.Random(f"pockettune-places/{self.spec.seed}/{number}").shuffle(order)
        given: list[str] = []
        for name in order:
            if len(given) >= per_round:
                break
            while True:
                self._command(name, "ask", name)
                answer = self._reply("asked", job_id)[2]
                task = answer["task"]
                if task is not None:
                    given.append(name)
                    break
                if not any(marker in answer["reason"] for marker in TRANSIENT_NO_TASK):
                    break
                if not self._round_open(job_id, number):
                    break
                self._check_time(job_id)
                time.sleep(0.5)
        # 2. training, in any order on the host; nothing is uploaded yet
        by_worker: dict[int, list[str]] = {}
        for name in given:
            by_worker.setdefault(self._owner[name], []).append(name)
        for worker, names in by_worker.items():
            self._commands[worker].put(("train", names))
        results = []
        for _ in given:
            _, name, outcome = self._reply("trained", job_id)
            results.append(outcome)
            if outcome["status"] != "trained":
                self.outcomes.append(outcome)
        plan, reason = planned_membership([o for o in results if o["job_id"] == job_id and o["round"] == number],
                                          job["min_updates"], self.spec.virtual_deadline)
        self.plans[number] = {"places": given, "accepted": plan, "close_reason": reason}
        # 3. delivery in virtual finish order; past the virtual deadline only once the round is frozen
        def upload(outcome: dict) -> dict:
            self._command(outcome["device"], "upload", outcome["device"])
            return self._reply("uploaded", job_id)[2]

        self.outcomes.extend(deliver_in_virtual_order(results, upload, self.spec.virtual_deadline, self._close_now))

    def _round_status(self, job_id: int, number: int) -> str | None:
        job = self.job_state(job_id)
        for entry in job.get("round_history", []):
            if entry.get("round") == number:
                return entry.get("status")
        return None

    def _round_open(self, job_id: int, number: int) -> bool:
        return self._round_status(job_id, number) == "open"

    def _close_now(self, job_id: int, number: int) -> None:
        """Have the coordinator close round ``number`` now if it is still open (its virtual deadline
        passed); a round it froze itself (``min_updates`` reached) is left as it is."""
        if not self._round_open(job_id, number):
            return
        from fleet.transport import ProtocolError

        try:
            self.admin.json("POST", f"api/v1/jobs/{job_id}/rounds/{number}/close", {})
        except ProtocolError as exc:
            if exc.code != "round_closed":   # it froze meanwhile: nothing to do
                raise

    def _command(self, name: str, command: str, arg) -> None:
        self._commands[self._owner[name]].put((command, arg))

    def _reply(self, kind: str, job_id: int) -> tuple:
        """The next reply from a worker, which must be of ``kind`` (an error or a dead worker raises)."""
        while True:
            try:
                reply = self._replies.get(timeout=1.0)
            except queue.Empty:
                if any(not w.is_alive() for w in self._workers):
                    raise RuntimeError(f"a device worker process died; see {self.workdir / 'devices.log'}") from None
                self._check_time(job_id)
                continue
            if reply[0] == "error":
                raise RuntimeError(f"device {reply[1]}: {reply[2]} (see {self.workdir / 'devices.log'})")
            if reply[0] != kind:
                raise RuntimeError(f"expected a {kind!r} reply from the workers, got {reply[:2]}")
            return reply

    def _check_time(self, job_id: int) -> None:
        if time.monotonic() > self._deadline:
            raise TimeoutError(f"job {job_id} did not finish in time")

    def _evaluated(self, job: dict) -> bool:
        """True once round 0 and every closed round the job scores (``eval_every``) have an
        evaluation, or evaluation is off."""
        if not job.get("eval_examples", 1) or job["status"] != "completed":
            return True     # a cancelled or failed job's remaining rounds are never evaluated
        rounds = [0] + [e["round"] for e in job.get("round_history", []) if e.get("status") == "closed"]
        scored = [r for r in rounds if is_evaluated_round(r, job["rounds"], job.get("eval_every", 1))]
        return all(evaluation_of(job, r) is not None for r in scored)

    @staticmethod
    def _last_value(job: dict) -> str:
        for entry in reversed(job.get("round_history", [])):
            evaluation = entry.get("evaluation")
            if evaluation and evaluation.get("value") is not None:
                return f"{evaluation['metric']} {score_text(evaluation)} after round {entry['round']}"
        return ""

    def download_adapter(self, job_id: int, dest: Path) -> Path:
        """The final global adapter as a PEFT directory (``PeftModel.from_pretrained`` loads it)."""
        import io
        import zipfile

        response = self.admin.request("GET", f"api/v1/jobs/{job_id}/adapter")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            archive.extractall(dest)
        return dest


def accepted_by_runtime(outcomes: list[dict]) -> dict[str, int]:
    """Accepted updates per training runtime (artifact format) over the whole run."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome["status"] == "accepted":
            runtime = outcome.get("runtime") or DEFAULT_FORMAT
            counts[runtime] = counts.get(runtime, 0) + 1
    return dict(sorted(counts.items()))


def score_text(evaluation: dict) -> str:
    """An evaluation's value, with its 95% interval when the coordinator gives one."""
    value, interval, metric = evaluation.get("value"), evaluation.get("ci95"), evaluation.get("metric") or ""
    if value is None:
        return "-"
    try:
        from models.intervals import formatted
    except ImportError:
        formatted = None
    if formatted is not None:
        return formatted(value, interval, metric)
    text = f"{value:.3f}"
    return text if not interval else f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]"


def format_report(report: dict) -> str:
    """The per-round table people read at the end of a run.

    ``virtual s`` is the virtual clock; ``real s`` and ``FLOP util`` (the runtime's measured
    utilization of this host) are measurements of this run on this machine.
    """
    lines = [f"{'round':>5} {'real s':>8} {'virtual s':>10} {'closed by':>11} {'ok':>3} {'cut':>3} {'drop':>4} "
             f"{'rej':>3} {'MB down':>8} {'MB up':>7} {'loss':>13} {'FLOP util':>9}  eval"]
    initial = report.get("initial_evaluation")
    if initial and initial.get("value") is not None:
        lines.append(f"{0:>5} {'':>8} {'':>10} {'(start)':>11} {'':>3} {'':>3} {'':>4} {'':>3} {'':>8} {'':>7} "
                     f"{'':>13} {'':>9}  {initial['metric']} {score_text(initial)}")
    for r in report["rounds"]:
        loss = (f"{r['mean_loss_before']:.3f}>{r['mean_loss_after']:.3f}"
                if r["mean_loss_before"] is not None else "-")
        value = f"{r['metric']} {score_text(r)}" if r["value"] is not None else "-"
        util = f"{r['mean_flop_utilization']:.1%}" if r["mean_flop_utilization"] is not None else "-"
        lines.append(f"{r['round']:>5} {r['real_seconds'] or 0:>8.1f} {r['virtual_seconds'] or 0:>10.1f} "
                     f"{r['close_reason'] or '-':>11} {r['accepted']:>3} {r.get('cut', 0):>3} {r['dropped']:>4} "
                     f"{r['rejected']:>3} {r['bytes_down'] / 1e6:>8.2f} {r['bytes_up'] / 1e6:>7.2f} {loss:>13} "
                     f"{util:>9}  {value}")
    by_runtime = report.get("accepted_by_runtime") or {}
    if len(by_runtime) > 1:
        lines.append("accepted updates by runtime: " + ", ".join(f"{k} {v}" for k, v in by_runtime.items()))
    disordered = [r["round"] for r in report["rounds"] if r.get("out_of_order")]
    if disordered:
        lines.append(f"rounds {disordered}: the coordinator's real deadline froze them before the results the "
                     "virtual clock accepts arrived (raise --round-deadline)")
    return "\n".join(lines)


def save_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
