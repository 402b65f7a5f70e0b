"""LEGEND-style configuration: LoRA depth and a rising rank distribution sized to each device.

LEGEND's observation is that LoRA layers with higher ranks close to the output save resources
at comparable quality, and that depth (how many of the last layers get LoRA) and the rank
distribution have to be chosen together. Here:

**Rank profile.** The job has one rank per layer: rising linearly from
``bottom_rank_fraction * R`` at the reference's lowest LoRA layer to ``R`` (the reference's
top rank) at the top layer, and never above the reference rank of a layer. A device given depth
``k`` trains the top ``k`` layers of that profile. One profile for the whole fleet (rather than
ranks rising over each device's own ``k`` layers) means every device that trains a layer trains
it at the same rank, so a layer's aggregate mixes adapters of one shape, and a shallower tier is
exactly the top of a deeper one, so its cost is never higher.

**Learnable minimum.** No device gets fewer LoRA layers than option ``min_depth`` (default
``ceil(K / 2)``): LEGEND picks "the shallowest depth still able to learn the task", and a fleet
two thirds of which trained a single LoRA layer collapsed (0.41 accuracy against uniform's
0.79 in docs/heterogeneity.md's first run), because those devices' updates were noise for the
shared top layer. A device too slow for the minimum keeps the minimum depth with fewer local
steps, rather than a depth that cannot learn. The default is a conservative reading, not a
measured threshold: a job that knows its task's minimum sets it.

**Depth.** Among the depths of option ``depths`` (default ``[1, 2, 4, K]``, clipped to the
reference depth ``K`` and raised to ``min_depth``), the deepest whose estimated task time on this device fits the target
is chosen, followed by every shallower one as fallbacks (a deeper tier that does not fit the
device's RAM falls back to a shallower one). The target is option ``target_seconds`` or, by
default, the reference tier's estimated time on the fastest device of the fleet times
``slack`` (estimated at the fleet's measured slowdown from reported peaks, the scale the
calibrated per-device estimates are on): the round should not wait for anyone much longer than the best device needs for the
full configuration. When not even the shallowest depth fits, it is handed out alone with its
local steps cut to what fits (never below ``min_steps``) so that a very slow device still
reports near the target.

**Staying put.** A depth is an artifact the device downloads once (hundreds of MB), so a device
keeps the depth it trained last while that depth's estimate is within ``switch_margin`` (default
1.25) of the target, moves deeper only to a depth that fits with that margin to spare, and
shallower only when over the target by more than the margin (hysteresis: in the first run on
the trusted harness, mid-range phones near the target flipped between depths 2 and 4 and paid
a 616-second download on their 10 Mbit/s link at most switches). The default margin is a
reading of how much calibrated estimates move between tasks, not a tuned value.

**Calibration.** Estimates (:func:`~fleet.task_cost.estimate_task_time`)
start from the device's reported GFLOP/s and bandwidth, which a phone's benchmark can get
badly wrong. Once the device has submitted tasks, its speed is taken from them instead
(:func:`calibrated_capabilities`): the median over its last ``history_window`` tasks of how
much slower than estimated it really trained, and of the bandwidth it really achieved.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from coordinator.scheduling.configurator import Configurator, DeviceView, JobView, TierChoice, register
from coordinator.scheduling.options import list_option, number_option
from fleet.task_cost import estimate_task_seconds, estimate_task_time, reported_speed, slowed
from models.tier_algebra import sub_tier, tier_ranks, unique_tiers

#: Depths tried by default (those above the reference depth are clipped to it).
DEFAULT_DEPTHS = (1, 2, 4)


@dataclass(frozen=True)
class DepthConfig:
    """One LEGEND configuration: LoRA on the last ``depth`` layers, the tier and its arm label."""

    depth: int
    tier: dict
    arm: str


def calibrated_capabilities(device: DeviceView, model_shape: dict, window: int = 5) -> dict:
    """``device.capabilities`` with ``gflops`` and ``bandwidth_mbps`` replaced by what its last
    ``window`` submitted tasks measured (unchanged when it has none).

    Compute: a task's ``compute_seconds`` over the estimate for its tier and steps is how much
    slower than its reported peak the device really trains; the median of these ratios divides
    the reported GFLOP/s. Transfer: bytes moved over the task's non-compute seconds. A task
    without ``compute_seconds`` gives one ratio, its whole time over the whole estimate, that
    scales both figures.
    """
    caps = dict(device.capabilities)
    gflops, mbps = reported_speed(caps)
    done = [t for t in device.history if t.submitted and t.seconds is not None and t.seconds > 0]
    done.sort(key=lambda t: t.round)
    slowdowns, bandwidths = [], []
    for task in done[-window:]:
        try:
            estimate = estimate_task_time(task.tier, task.local_steps, model_shape, caps)
        except (TypeError, ValueError, KeyError):
            continue  # a tier this model cannot have: nothing to learn from it
        if task.compute_seconds is not None and task.compute_seconds > 0 and estimate.compute_seconds > 0:
            slowdowns.append(task.compute_seconds / estimate.compute_seconds)
            transfer_seconds = task.seconds - task.compute_seconds
            moved = (task.download_bytes or 0) + (task.upload_bytes or 0)
            if transfer_seconds > 0 and moved > 0:
                bandwidths.append(moved * 8 / 1e6 / transfer_seconds)
            elif transfer_seconds > 0 and estimate.transfer_seconds > 0:
                bandwidths.append(mbps * estimate.transfer_seconds / transfer_seconds)
        elif estimate.total > 0:
            ratio = task.seconds / estimate.total
            slowdowns.append(ratio)
            bandwidths.append(mbps / ratio)
    if slowdowns:
        caps["gflops"] = gflops / statistics.median(slowdowns)
    if bandwidths:
        caps["bandwidth_mbps"] = statistics.median(bandwidths)
    return caps


@register
class Legend(Configurator):
    """Deepest LoRA configuration (with ranks rising to the output) that fits the round's target."""

    name = "legend"
    uses_fleet_slowdown = True
    option_defaults = {
        "depths": None,                # None: [1, 2, 4, K]
        "target_seconds": None,        # None: reference tier on the fleet's fastest device, times slack
        "slack": 1.0,
        "min_steps": 1,
        "history_window": 5,
        "bottom_rank_fraction": 0.25,
        "min_depth": None,             # None: ceil(K / 2), the learnable minimum
        "switch_margin": 1.25,         # hysteresis: 1 switches whenever the estimate crosses the target
    }

    def check_options(self, options: dict) -> dict:
        if options["depths"] is not None:
            options["depths"] = sorted(list_option("depths", options["depths"], minimum=1, integer=True))
        if options["target_seconds"] is not None:
            number_option("target_seconds", options["target_seconds"], minimum=0, exclusive_minimum=True)
        number_option("slack", options["slack"], minimum=0, exclusive_minimum=True)
        number_option("min_steps", options["min_steps"], minimum=1, integer=True)
        number_option("history_window", options["history_window"], minimum=1, integer=True)
        number_option("bottom_rank_fraction", options["bottom_rank_fraction"], minimum=0, maximum=1,
                      exclusive_minimum=True)
        if options["min_depth"] is not None:
            number_option("min_depth", options["min_depth"], minimum=1, integer=True)
        number_option("switch_margin", options["switch_margin"], minimum=1.0)
        return options

    def min_depth(self, job: JobView) -> int:
        """The shallowest depth any device gets (option ``min_depth`` or ``ceil(K / 2)``, at most K)."""
        deepest = len(tier_ranks(job.reference_tier))
        wanted = self.options["min_depth"] or math.ceil(deepest / 2)
        return min(wanted, deepest)

    def rank_profile(self, reference: dict) -> tuple[int, ...]:
        """The job's rank for each reference LoRA layer, bottom to top (see the module docstring)."""
        ref = tier_ranks(reference)
        top = ref[-1]
        low = max(1, round(top * self.options["bottom_rank_fraction"]))
        if len(ref) == 1:
            return (top,)
        rising = [low + (top - low) * i / (len(ref) - 1) for i in range(len(ref))]
        return tuple(max(1, min(cap, round(r))) for cap, r in zip(ref, rising))

    def configs(self, job: JobView) -> list[DepthConfig]:
        """The configurations on offer, shallowest first."""
        profile = self.rank_profile(job.reference_tier)
        deepest = len(profile)
        depths = self.options["depths"] or [*DEFAULT_DEPTHS, deepest]
        floor = self.min_depth(job)
        depths = sorted({max(floor, min(d, deepest)) for d in depths})
        return [DepthConfig(depth=d, tier=sub_tier(job.reference_tier, profile[deepest - d:]),
                            arm=f"k{d}-rising{profile[-1]}") for d in depths]

    def target_seconds(self, job: JobView, device: DeviceView) -> float:
        """Seconds a task should take: option ``target_seconds``, or the reference tier's estimate
        on the fleet's fastest device (this device when the fleet is empty) times ``slack``."""
        if self.options["target_seconds"] is not None:
            return float(self.options["target_seconds"])
        fleet = list(job.fleet) or [device.capabilities]
        # Reported peaks are never reached; devices' own estimates are calibrated to what they
        # measured, so the target is put on the same scale with the fleet's typical slowdown.
        slowdown = job.fleet_compute_slowdown if job.fleet_compute_slowdown > 0 else 1.0
        fastest = min(estimate_task_seconds(job.reference_tier, job.local_steps, job.model_shape,
                                            slowed(caps, slowdown)) for caps in fleet)
        return fastest * self.options["slack"]

    def candidate_tiers(self, job: JobView) -> list[dict]:
        return unique_tiers(c.tier for c in self.configs(job))

    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        caps = calibrated_capabilities(device, job.model_shape, self.options["history_window"])
        target = self.target_seconds(job, device)
        configs = self.configs(job)
        seconds = {c.depth: estimate_task_seconds(c.tier, job.local_steps, job.model_shape, caps) for c in configs}
        fitting = [c.depth for c in configs if seconds[c.depth] <= target]
        best = self._switching_with_margin(job, device, configs, seconds, target, max(fitting) if fitting else None)
        if best is not None:
            return [TierChoice(c.tier, job.local_steps, c.arm) for c in reversed(configs) if c.depth <= best]
        shallowest = configs[0]
        return [TierChoice(shallowest.tier, self._steps_within(shallowest.tier, target, job, caps), shallowest.arm)]

    def _switching_with_margin(self, job: JobView, device: DeviceView, configs: list[DepthConfig],
                               seconds: dict[int, float], target: float, deepest_fitting: int | None) -> int | None:
        """The depth to hand out given the depth the device trained last (hysteresis).

        A new depth is a new artifact to download (hundreds of MB, minutes on a mid-range
        phone's link), and calibrated estimates move a little with every task, so a device near
        the target would otherwise flip between two depths and pay the download each time. The
        device keeps its last depth while that depth's estimate is within ``switch_margin`` of
        the target; it goes deeper only to a depth that fits with the same margin to spare
        (``seconds <= target / margin``), and shallower only when its depth is over the target by
        more than the margin. Without history, or with ``switch_margin`` 1: the deepest depth
        that fits (None: none fits).
        """
        margin = self.options["switch_margin"]
        latest = max(device.history, key=lambda t: t.round) if device.history else None
        current = next((c.depth for c in configs if latest is not None and c.arm == latest.arm), None)
        if current is None or margin <= 1.0:
            return deepest_fitting
        if seconds[current] > target * margin:
            return deepest_fitting                       # clearly too slow now: shallower (or fewer steps)
        deeper = [d for d in seconds if d > current and seconds[d] <= target / margin]
        return max(deeper) if deeper else current

    def _steps_within(self, tier: dict, target: float, job: JobView, caps: dict) -> int:
        """Local steps of ``tier`` that fit ``target`` on a device with ``caps``, in [min_steps, job's]."""
        one_step = estimate_task_time(tier, 1, job.model_shape, caps)
        if one_step.compute_seconds > 0:
            steps = math.floor((target - one_step.transfer_seconds) / one_step.compute_seconds)
        else:
            steps = job.local_steps
        floor = min(self.options["min_steps"], job.local_steps)
        return max(floor, min(job.local_steps, steps))
