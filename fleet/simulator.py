"""A heterogeneous fleet on one machine: N devices against a real coordinator over loopback.

Each simulated device is a full :class:`fleet.device.DeviceAgent` (its own registration,
token, cache, data shard, profile) that trains the real ExecuTorch program. Devices are
spread over ``workers`` processes (one per core by default), each of which serves its
devices in turn, so 20 devices do not need 20 copies of the runtime in memory, and a
device's measured compute time is not inflated by more processes than cores.

Two clocks are reported per round:

- **real**: when the coordinator opened and closed the round (this machine, this run);
- **virtual**: what the round would take on the profiles' hardware. Each device's task
  costs its transfers at its bandwidth plus its measured compute times its slowdown
  (``TaskOutcome.virtual_seconds``). A round that closed on ``min_updates`` lasts as long as
  its slowest accepted device; one that closed at its deadline lasts at least
  ``virtual_deadline_s``. Which updates the coordinator accepted follows real arrival
  order; with ``realtime_factor`` > 0 the devices also sleep out their profile's extra time,
  so real order follows virtual order (at the cost of wall time).
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

from fleet.profiles import DeviceProfile, fleet_profiles
from fleet.transport import CoordinatorClient, RetryPolicy

log = logging.getLogger(__name__)

FINAL_STATUSES = ("completed", "failed", "cancelled")


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
    round_deadline_s: float = 300.0
    virtual_deadline_s: float | None = None  # None: round_deadline_s
    realtime_factor: float = 0.0
    job: dict = field(default_factory=dict)  # model, tier, local_steps, lr, strategy, eval_examples ...
    #: how many devices run ONNX Runtime instead of ExecuTorch (chosen by seed across profiles)
    onnxruntime_devices: int = 0

    def places(self) -> tuple[int, int]:
        per_round = self.devices_per_round or self.devices
        return per_round, self.min_updates or max(1, math.ceil(0.75 * per_round))


# --- worker processes --------------------------------------------------------------------------

def _worker(base_url: str, enrollment_key: str, device_specs: list[dict], fleet_seed: int, outcomes, stop,
            peak_gflops: float | None, log_path: str, runtime_threads: int) -> None:
    """Run several devices in turn until ``stop`` is set; push every TaskOutcome to ``outcomes``."""
    from fleet.runtime_executorch import set_runtime_threads
    from pockettune.cli import quiet_library_chatter

    # The workers share the machine's cores: each runtime's threadpool gets its share, not all of them.
    set_runtime_threads(runtime_threads)

    # The devices' logs (and the runtime's own stderr chatter) go to the run folder, not the
    # terminal that shows the fleet's progress.
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    quiet_library_chatter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    from fleet.data import LocalData
    from fleet.device import DeviceAgent, DeviceConfig, default_platform
    from models.tasks import PartitionSpec

    agents = []
    for spec in device_specs:
        data = LocalData.from_task(spec["task"], spec["shard"], spec["num_shards"],
                                   PartitionSpec.parse(spec["partition"], seed=fleet_seed))
        agents.append(DeviceAgent(DeviceConfig(
            coordinator=base_url, state_dir=Path(spec["state_dir"]), data=data, enrollment_key=enrollment_key,
            name=spec["name"], profile=DeviceProfile(**spec["profile"]), realtime_factor=spec["realtime_factor"],
            seed=spec["seed"], retry=RetryPolicy(give_up_after_s=120.0), peak_gflops=peak_gflops,
            runtimes=tuple(spec.get("runtimes", ["executorch"])),
            platform=default_platform(spec.get("runtimes", ["executorch"])[0]),
            threads=runtime_threads)))
    for agent in agents:
        agent.ensure_registered()
    order = random.Random(fleet_seed + len(agents))
    while not stop.is_set():
        worked = False
        order.shuffle(agents)        # no device always asks first (first come gets the places)
        for agent in agents:
            if stop.is_set():
                break
            try:
                outcome, _ = agent.work_once()
            except Exception as exc:  # one device's failure must not stop the fleet
                log.warning("%s: %s", agent.config.name, exc)
                continue
            if outcome is not None:
                outcomes.put(outcome.to_dict())
                worked = True
        if not worked:
            stop.wait(0.5)


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
    mean_flop_utilization: float | None
    metric: str | None = None
    value: float | None = None


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


def round_reports(job: dict, outcomes: list[dict], virtual_deadline_s: float) -> list[RoundReport]:
    reports = []
    for entry in job.get("round_history", []):
        if entry.get("status") != "closed":
            continue
        number = entry["round"]
        mine = [o for o in outcomes if o["job_id"] == job["job_id"] and o["round"] == number]
        accepted = [o for o in mine if o["status"] == "accepted"]
        virtual = max((o["virtual_seconds"] for o in accepted), default=0.0)
        if entry.get("close_reason") == "deadline":
            virtual = max(virtual, virtual_deadline_s)
        evaluation = evaluation_of(job, number) or {}
        reports.append(RoundReport(
            round=number, real_seconds=_seconds_between(entry.get("opened_at"), entry.get("closed_at")),
            virtual_seconds=virtual, close_reason=entry.get("close_reason"), accepted=len(accepted),
            dropped=sum(o["status"] == "dropped" for o in mine),
            rejected=sum(o["status"].startswith("rejected") or o["status"] == "refused_artifact" for o in mine),
            bytes_down=sum(o["bytes_down"] for o in mine), bytes_up=sum(o["bytes_up"] for o in mine),
            mean_loss_before=_mean([o["loss_before"] for o in accepted]),
            mean_loss_after=_mean([o["loss_after"] for o in accepted]),
            mean_flop_utilization=_mean([o["flop_utilization"] for o in accepted]),
            metric=evaluation.get("metric"), value=evaluation.get("value")))
    return reports


class FleetSimulation:
    """Create the job, run the fleet until the job ends and every round is evaluated, report."""

    def __init__(self, spec: FleetSpec, base_url: str, admin_token: str, enrollment_key: str, workdir: Path,
                 progress: bool = True):
        self.spec, self.workdir = spec, Path(workdir)
        self.base_url, self.enrollment_key = base_url, enrollment_key
        self.admin = CoordinatorClient(base_url, token=admin_token, retry=RetryPolicy(give_up_after_s=120.0))
        self.progress = progress
        self.outcomes: list[dict] = []
        self.job: dict = {}

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
                 "realtime_factor": self.spec.realtime_factor,
                 "runtimes": ["onnxruntime"] if i in onnxruntime else ["executorch"]} for i, p in enumerate(profiles)]

    def run(self, timeout_s: float = 3600.0) -> dict:
        from tqdm import tqdm

        from fleet.hardware import measure_matmul_gflops

        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        job = self.create_job()
        job_id = job["job_id"]
        bar = tqdm(total=self.spec.rounds, desc="preparing artifact", unit="round", disable=not self.progress)
        while job["status"] == "preparing":
            time.sleep(1.0)
            job = self.job_state(job_id)
        if job["status"] != "running":
            bar.close()
            raise RuntimeError(f"job {job_id} is {job['status']}: {job.get('error')}")
        # One matmul benchmark for the whole fleet: they share this machine's cores.
        peak = measure_matmul_gflops()
        context = mp.get_context("spawn")
        outcomes, stop = context.Queue(), context.Event()
        specs = self.device_specs()
        count = min(self.spec.workers, len(specs))
        threads = max(1, (os.cpu_count() or 1) // max(1, count))
        workers = [context.Process(target=_worker, args=(self.base_url, self.enrollment_key, specs[w::self.spec.workers],
                                                         self.spec.seed, outcomes, stop, peak,
                                                         str(self.workdir / "devices.log"), threads), daemon=True)
                   for w in range(count)]
        for worker in workers:
            worker.start()
        try:
            closed = 0
            bar.set_description("training")
            while True:
                self._drain(outcomes)
                job = self.job_state(job_id)
                now_closed = sum(e["status"] == "closed" for e in job.get("round_history", []))
                if now_closed > closed:
                    bar.update(now_closed - closed)
                    closed = now_closed
                last = self._last_value(job)
                bar.set_postfix_str(f"updates {sum(o['status'] == 'accepted' for o in self.outcomes)}"
                                    + (f", {last}" if last else ""))
                if job["status"] in FINAL_STATUSES and self._evaluated(job):
                    break
                if job["status"] in FINAL_STATUSES:
                    stop.set()    # training is over; wait for the last evaluations only
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f} s")
                if any(not w.is_alive() for w in workers) and not stop.is_set():
                    raise RuntimeError(f"a device worker process died; see {self.workdir / 'devices.log'}")
                time.sleep(1.0)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
                if worker.is_alive():
                    worker.terminate()
            self._drain(outcomes)
            bar.close()
        self.job = job
        virtual_deadline = self.spec.virtual_deadline_s or self.spec.round_deadline_s
        reports = round_reports(job, self.outcomes, virtual_deadline)
        return {"spec": asdict(self.spec), "job_id": job_id, "status": job["status"],
                "wall_seconds": time.monotonic() - started, "peak_gflops": peak,
                "initial_evaluation": evaluation_of(job, 0), "rounds": [asdict(r) for r in reports],
                "virtual_seconds": sum(r.virtual_seconds or 0 for r in reports),
                "accepted_by_runtime": accepted_by_runtime(self.outcomes), "outcomes": self.outcomes}

    def _drain(self, outcomes) -> None:
        while True:
            try:
                self.outcomes.append(outcomes.get_nowait())
            except queue.Empty:
                return

    def _evaluated(self, job: dict) -> bool:
        """True once every closed round (and round 0) has an evaluation, or evaluation is off."""
        if not self.spec.job.get("eval_examples", 100) or job["status"] != "completed":
            return True     # a cancelled or failed job's remaining rounds are never evaluated
        rounds = [0] + [e["round"] for e in job.get("round_history", []) if e.get("status") == "closed"]
        return all(evaluation_of(job, r) is not None for r in rounds)

    @staticmethod
    def _last_value(job: dict) -> str:
        for entry in reversed(job.get("round_history", [])):
            evaluation = entry.get("evaluation")
            if evaluation and evaluation.get("value") is not None:
                return f"{evaluation['metric']} {evaluation['value']:.3f} after round {entry['round']}"
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
            runtime = outcome.get("runtime") or "executorch"
            counts[runtime] = counts.get(runtime, 0) + 1
    return dict(sorted(counts.items()))


def format_report(report: dict) -> str:
    """The per-round table people read at the end of a run."""
    lines = [f"{'round':>5} {'real s':>8} {'virtual s':>10} {'closed by':>11} {'ok':>3} {'drop':>4} {'rej':>3} "
             f"{'MB down':>8} {'MB up':>7} {'loss':>13} {'FLOP util':>9} {'eval':>16}"]
    initial = report.get("initial_evaluation")
    if initial:
        lines.append(f"{0:>5} {'':>8} {'':>10} {'(start)':>11} {'':>3} {'':>4} {'':>3} {'':>8} {'':>7} {'':>13} "
                     f"{'':>9} {initial['metric'][:8]:>8} {initial['value']:>7.3f}")
    for r in report["rounds"]:
        loss = (f"{r['mean_loss_before']:.3f}>{r['mean_loss_after']:.3f}"
                if r["mean_loss_before"] is not None else "-")
        value = f"{(r['metric'] or '')[:8]:>8} {r['value']:>7.3f}" if r["value"] is not None else f"{'-':>16}"
        util = f"{r['mean_flop_utilization']:.1%}" if r["mean_flop_utilization"] is not None else "-"
        lines.append(f"{r['round']:>5} {r['real_seconds'] or 0:>8.1f} {r['virtual_seconds'] or 0:>10.1f} "
                     f"{r['close_reason'] or '-':>11} {r['accepted']:>3} {r['dropped']:>4} {r['rejected']:>3} "
                     f"{r['bytes_down'] / 1e6:>8.2f} {r['bytes_up'] / 1e6:>7.2f} {loss:>13} {util:>9} {value}")
    by_runtime = report.get("accepted_by_runtime") or {}
    if len(by_runtime) > 1:
        lines.append("accepted updates by runtime: " + ", ".join(f"{k} {v}" for k, v in by_runtime.items()))
    return "\n".join(lines)


def save_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
