"""Batch-size regulation, jointly with feature merging (MergeSFL's control step).

Workers differ in speed, so with equal batch sizes the fast ones wait for the slow one at every
step. MergeSFL gives each worker a batch size in proportion to its speed so that all finish a
step together, and chooses the sizes jointly with the merge, since the merged batch's label mix
depends on how many examples each worker contributes. Its public code does neither (random
selection, uniform batch sizes); this is the closest reading of the paper's description:

1. **Time first.** A plan's step time is its slowest participant's: ``size / speed + latency``
   (speed in examples per second and latency in seconds, both measured by the server from the
   worker's recent steps). Among the batch sizes the tier's programs were compiled for (fixed
   shapes: a few per tier) and 0 (sit this step out), the shortest step time ``T_min`` at which
   the workers' largest sizes that fit reach the target batch is found.
2. **Then the label mix.** Within ``(1 + slack) * T_min``, every worker may take any compiled
   size that fits; coordinate descent over the workers chooses the sizes that minimize the
   merged batch's divergence from the global label distribution (``merging.kl_from_global``)
   while the batch stays at or above its target (and not beyond it by more than one largest
   size); ties go to the shorter step, the less idle time, more participants (a worker that
   sits out trains nothing that step), then the smaller batch.

Reported per plan: each worker's size and step time, the step time, the idle time the plan
leaves (each participant's wait for the slowest, summed) and the merged label mix with its
divergence, so the dashboard and the bench show what regulation bought.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coordinator.split.merging import kl_from_global, merged_distribution


@dataclass(frozen=True)
class WorkerState:
    """What the server knows of a worker: its measured speed and latency and its label counts."""

    speed: float                       # examples per second through the bottom, measured
    latency: float                     # seconds per step that do not scale with the batch (transfers)
    labels: Mapping[str, float]        # label counts from the labels it has sent


@dataclass(frozen=True)
class Plan:
    """One step's batch sizes and what they cost."""

    batch_sizes: dict[str, int]
    step_seconds: float
    idle_seconds: float
    label_mix: dict[str, float]
    divergence: float

    @property
    def merged_batch(self) -> int:
        return sum(self.batch_sizes.values())


def worker_seconds(worker: WorkerState, size: int) -> float:
    """How long ``worker`` takes for a step of ``size`` examples (0: it sits the step out)."""
    return 0.0 if size == 0 else size / worker.speed + worker.latency


def plan_of(batch_sizes: Mapping[str, int], workers: Mapping[str, WorkerState],
            global_distribution: Mapping[str, float]) -> Plan:
    """The cost of ``batch_sizes``: step and idle seconds, merged label mix and its divergence."""
    times = {w: worker_seconds(workers[w], s) for w, s in batch_sizes.items() if s > 0}
    step = max(times.values(), default=0.0)
    mix = merged_distribution({w: s for w, s in batch_sizes.items() if s > 0},
                              {w: workers[w].labels for w in batch_sizes})
    return Plan(batch_sizes=dict(batch_sizes), step_seconds=step, idle_seconds=sum(step - t for t in times.values()),
                label_mix=mix, divergence=kl_from_global(mix, global_distribution) if mix else float("inf"))


def regulate(workers: Mapping[str, WorkerState], global_distribution: Mapping[str, float], target_batch: int,
             compiled_sizes: Sequence[int], slack: float = 0.2, passes: int = 4) -> Plan:
    """Batch sizes for one merged step of at least ``target_batch`` examples (see the module
    docstring). ``ValueError`` if even every worker at its largest size falls short."""
    sizes = sorted({int(s) for s in compiled_sizes})
    if not workers or not sizes or sizes[0] < 1 or target_batch < 1:
        raise ValueError("need workers, compiled batch sizes >= 1 and a target batch >= 1")
    for name, worker in workers.items():
        if not (worker.speed > 0 and worker.latency >= 0):
            raise ValueError(f"worker {name}: speed must be > 0 and latency >= 0")
    if slack < 0:
        raise ValueError("slack must be >= 0")

    def fitting(limit: float) -> dict[str, list[int]]:
        return {w: [0] + [s for s in sizes if worker_seconds(workers[w], s) <= limit + 1e-12] for w in workers}

    candidates = sorted({worker_seconds(w, s) for w in workers.values() for s in sizes})
    t_min = next((t for t in candidates if sum(max(options) for options in fitting(t).values()) >= target_batch), None)
    if t_min is None:
        raise ValueError(f"the workers' largest batches sum to {len(workers) * sizes[-1]}, below the target "
                         f"{target_batch}: compile larger batch sizes or lower the target")
    options = fitting(t_min * (1 + slack))
    ceiling = target_batch + sizes[-1]

    def score(batch_sizes: dict[str, int]) -> tuple:
        total = sum(batch_sizes.values())
        plan = plan_of(batch_sizes, workers, global_distribution)
        short = max(0, target_batch - total)
        participants = sum(1 for size in batch_sizes.values() if size > 0)
        return (short, max(0, total - ceiling), round(plan.divergence, 9), plan.step_seconds, plan.idle_seconds,
                -participants, total)

    # Start from the time-aligned plan: every worker at its largest size within T_min.
    current = {w: max(s for s in opts if worker_seconds(workers[w], s) <= t_min + 1e-12)
               for w, opts in fitting(t_min).items()}
    best = score(current)
    for _ in range(passes):
        improved = False
        for w in sorted(workers):
            for size in options[w]:
                trial = {**current, w: size}
                trial_score = score(trial)
                if trial_score < best:
                    current, best, improved = trial, trial_score, True
        if not improved:
            break
    return plan_of(current, workers, global_distribution)
