"""A simulated fleet in a split job, on the virtual clock: the conductor.

Split devices (:class:`fleet.split_worker.SplitWorker`, the real bottom programs on the
ExecuTorch runtime, real HTTP) are driven by one conductor that owns the job's clock (the job
is created with ``clock=conducted``; ``POST .../clock`` is admin-only). As the FedAvg simulator
does for rounds (fleet/simulator.py), the host's speed decides nothing: each event's virtual
time comes from counted work (fleet/split_cost.py at the profile's calibrated rate) and bytes
(the profile's link), and events reach the coordinator in virtual order, with the clock set to
each one's virtual time first. So the coordinator measures each worker's speed on the virtual
clock, exactly as it would measure a real phone's on the wall clock, and its deadlines drop
exactly the workers the virtual clock makes late.

Per step:

1. every device asks what to do; those planned compute their features (host), each with a
   virtual arrival time ``max(free, now) + forward + upload`` (plus, the first time a device
   uses a batch size, the download of that size's programs); a seeded draw per device and
   step decides whether it drops out this step (it never sends);
2. the features are delivered in arrival order up to the step's deadline; if a planned device
   is missing, the clock moves past the deadline and the step runs without it;
3. the server's top step costs ``top FLOPs / server rate``; then each merged device fetches its
   gradient and is free again after ``download + forward + backward``;
4. every ``average_every`` steps the devices upload their bottoms (in arrival order) and
   download the average.

With ``prefetch`` every device downloads all its programs before the clock starts: the
*steady* clock, as for a fleet that fetched its artifacts ahead of time (the FedAvg benches
report the same clock without one-off downloads). Without it a size's first use pays its
download on the virtual clock.

The record per step: virtual open and close times, the loss, the merged batch and its label
mix, each device's planned size, and the idle time (each merged device's wait for the last one).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet.profiles import DeviceProfile
from fleet.split_cost import (ModelShape, SERVER_SPEEDUP_OVER_REFERENCE, bottom_forward_flops, bottom_step_flops,
                              top_step_flops)
from fleet.split_worker import SplitWorker
from fleet.transport import CoordinatorClient
from fleet.virtual_clock import REFERENCE_SUSTAINED_GFLOPS

#: Seconds past a deadline the conductor moves the clock to close a step or an averaging.
PAST_DEADLINE_S = 1e-3


@dataclass
class SplitDevice:
    worker: SplitWorker
    profile: DeviceProfile
    name: str
    free_at: float = 0.0


@dataclass
class StepTrace:
    step: int
    opened_at: float
    closed_at: float
    planned: dict[str, int]
    merged: list[str]
    idle_seconds: float
    loss: float | None = None


@dataclass
class SplitRunTrace:
    steps: list[StepTrace] = field(default_factory=list)
    averagings: list[float] = field(default_factory=list)       # virtual time each finished
    prefetched_bytes: int = 0                                    # programs fetched before the clock started

    @property
    def idle_seconds(self) -> float:
        return sum(s.idle_seconds for s in self.steps)


class SplitConductor:
    """Drives ``devices`` through split job ``job_id`` on the virtual clock (see the module docstring)."""

    def __init__(self, admin: CoordinatorClient, job_id: int, devices: list[SplitDevice], shape: ModelShape, *,
                 split_layer: int, seq: int, rank: int, kind: str = "executorch-xnnpack-fp32", seed: int = 0,
                 loss_positions: int | None = None, on_step: Callable[[StepTrace], None] | None = None,
                 prefetch: bool = False):
        self.admin, self.job_id, self.devices = admin, job_id, devices
        self.shape, self.split_layer, self.seq, self.rank = shape, split_layer, seq, rank
        self.kind, self.seed, self.loss_positions, self.on_step = kind, seed, loss_positions, on_step
        self.prefetch = prefetch
        self.now = 0.0
        self.trace = SplitRunTrace()
        self._by_name = {d.name: d for d in devices}

    # --- the clock ----------------------------------------------------------------------------------

    def _set_clock(self, moment: float) -> None:
        if moment > self.now:
            self.admin.json("POST", f"api/v1/split-jobs/{self.job_id}/clock", {"now": moment})
            self.now = moment

    def _compute_s(self, device: SplitDevice, flops: float) -> float:
        return flops / (device.profile.sustained_gflops(self.kind) * 1e9)

    def _transfer_s(self, device: SplitDevice, nbytes: int) -> float:
        return 2 * device.profile.latency_s + nbytes * 8 / (device.profile.bandwidth_mbps * 1e6)

    def _forward_flops(self, batch: int) -> float:
        """The features: one forward of the bottom (the rest of the step's work follows the gradient)."""
        return bottom_forward_flops(self.shape, self.split_layer, batch, self.seq, self.rank)

    def _drops(self, device: SplitDevice, step: int) -> bool:
        draw = random.Random(f"{self.seed}:{device.name}:{step}").random()
        return draw < device.profile.dropout

    # --- the run ------------------------------------------------------------------------------------

    def run(self, max_events: int = 1_000_000, stop: Callable[[StepTrace], bool] | None = None) -> SplitRunTrace:
        """Drive the job to its end, or until ``stop(step trace)`` returns True after a step
        (a virtual-time budget, for instance)."""
        self._stop = stop
        self._stopped = False
        for device in self.devices:
            if device.worker.manifest is None:
                device.worker.join()
            if self.prefetch:
                self.trace.prefetched_bytes += device.worker.prefetch()
        for _ in range(max_events):
            actions = {d.name: d.worker.client.json("GET", d.worker._path("next")) for d in self.devices}
            kinds = {a["kind"] for a in actions.values()}
            if kinds == {"done"} or self._stopped:
                return self.trace
            if "download_adapter" in kinds:
                self._downloads(actions)
            elif "gradient" in kinds:
                self._gradients(actions)
            elif "upload_adapter" in kinds:
                self._uploads(actions)
            elif "features" in kinds:
                self._features(actions)
            else:                                   # everyone waits: a deadline must pass
                self._set_clock(self.now + self._deadline_gap())
        raise RuntimeError("the split job did not finish within the conductor's event budget")

    def _deadline_gap(self) -> float:
        job = self.admin.json("GET", f"api/v1/split-jobs/{self.job_id}")
        return float(job["spec"]["step_deadline_s"]) + PAST_DEADLINE_S

    def _features(self, actions: dict[str, dict]) -> None:
        planned = {name: a for name, a in actions.items() if a["kind"] == "features"}
        step = next(iter(planned.values()))["step"]
        deadline = self.now + min(a["deadline_in_s"] for a in planned.values())
        opened = self.now
        arrivals = []
        for name, action in sorted(planned.items()):
            device = self._by_name[name]
            if self._drops(device, step):
                continue
            fetched_before = device.worker.report.bytes_down
            body = device.worker.prepare_features(step, action["batch_size"])
            # A batch size used for the first time costs its programs' download (one-off).
            programs = device.worker.report.bytes_down - fetched_before
            arrival = max(device.free_at, self.now) + (self._transfer_s(device, programs) if programs else 0.0) \
                + self._compute_s(device, self._forward_flops(action["batch_size"])) + self._transfer_s(device, len(body))
            arrivals.append((arrival, name, body))
        arrivals.sort()
        sent = []
        for arrival, name, body in arrivals:
            if arrival > deadline:
                # Too late: its features arrive after the step went on; it is busy until then.
                self._by_name[name].free_at = arrival
                self._by_name[name].worker.discard_pending(step)
                continue
            self._set_clock(arrival)
            if self._by_name[name].worker.post_features(step, body):
                sent.append((arrival, name))
        if len(sent) < len(planned):
            self._set_clock(max(self.now, deadline + PAST_DEADLINE_S))
        job = self.admin.json("GET", f"api/v1/split-jobs/{self.job_id}")
        last = (job.get("progress") or {}).get("last_step")
        if not sent or last is None or last["number"] != step:
            return                                  # nobody made it: the coordinator abandons the step
        top_s = top_step_flops(self.shape, self.split_layer, sum(planned[n]["batch_size"] for _, n in sent),
                               self.seq, self.rank, self.loss_positions) \
            / (REFERENCE_SUSTAINED_GFLOPS["executorch-xnnpack-fp32"] * SERVER_SPEEDUP_OVER_REFERENCE * 1e9)
        closed = self.now                           # the last arrival, or the deadline when someone was missing
        self._set_clock(closed + top_s)
        trace = StepTrace(step=step, opened_at=opened, closed_at=self.now,
                          planned={n: a["batch_size"] for n, a in planned.items()}, merged=last["merged"],
                          idle_seconds=sum(closed - a for a, _ in sent), loss=last["loss"])
        self.trace.steps.append(trace)
        if self.on_step is not None:
            self.on_step(trace)
        if self._stop is not None and self._stop(trace):
            self._stopped = True

    def _gradients(self, actions: dict[str, dict]) -> None:
        for name, action in sorted(actions.items()):
            if action["kind"] != "gradient":
                continue
            device = self._by_name[name]
            size = device.worker.pending_size(action["step"])
            fetched = device.worker.apply_gradient(action["step"])
            work = bottom_step_flops(self.shape, self.split_layer, size, self.seq, self.rank) \
                - self._forward_flops(size)
            device.free_at = self.now + self._transfer_s(device, fetched) + self._compute_s(device, work)

    def _uploads(self, actions: dict[str, dict]) -> None:
        arrivals = []
        for name, action in sorted(actions.items()):
            if action["kind"] != "upload_adapter":
                continue
            device = self._by_name[name]
            body = device.worker.adapter_body()
            arrivals.append((max(device.free_at, self.now) + self._transfer_s(device, len(body)), name,
                             action["averaging"], body))
        for arrival, name, number, body in sorted(arrivals):
            self._set_clock(arrival)
            self._by_name[name].worker.post_adapter(number, body)

    def _downloads(self, actions: dict[str, dict]) -> None:
        for name, action in sorted(actions.items()):
            if action["kind"] != "download_adapter":
                continue
            device = self._by_name[name]
            fetched = device.worker.download_adapter(action["averaging"])
            device.free_at = max(device.free_at, self.now) + self._transfer_s(device, fetched)
        self.trace.averagings.append(self.now)
