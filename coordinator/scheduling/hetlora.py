"""HetLoRA's rank assignment (Cho et al., EMNLP 2024): a rank per device from its capability,
lowered for good when the device prunes its own rank.

HetLoRA gives devices heterogeneous LoRA ranks between ``r_min`` and ``r_max`` by what they
can afford, truncates the global adapter to each device's rank when it is sent (here: the
coordinator cuts the global adapter to the task's tier), lets each device prune its own rank
during local training (:mod:`models.rank_pruning`, asked for by the ``hetlora`` aggregation
strategy) and aggregates with zero-padding weighted by each update's norm
(:mod:`coordinator.strategies.hetlora`). This configurator is the assignment half:

- **Ranks on offer**: option ``ranks``, or by default the reference tier's top rank halved down
  to a quarter of it (8 -> [2, 4, 8]): halving is what a device's self-pruning does with the
  strategy's ``keep`` of 0.5, so a pruned device's rank always has a tier.
- **Capability**: the paper assigns higher ranks to more capable devices; the cost of a rank
  here is mainly memory and the adapter's bytes, not compute, so the device's place in the
  fleet by reported GFLOP/s decides: the slowest share of the fleet gets the lowest rank, the
  fastest the highest, in equal shares (:func:`capability_rank`).
- **Self-pruning is one-way**: once a device's accepted update used a lower rank (the
  coordinator reads it from the tensors, ``Update.effective_rank``, never from what the device
  says), the device gets at most the largest offered rank not above it, in every later round.
- **Fallbacks**: every lower rank, in case a tier is not built or does not fit the device's RAM.

Only the rank changes: depth, targets and pruning stay the reference's.
"""

from __future__ import annotations

from coordinator.scheduling.configurator import Configurator, DeviceView, JobView, TierChoice, register
from coordinator.scheduling.options import list_option
from fleet.task_cost import reported_speed
from models.tier_algebra import sub_tier, tier_ranks, unique_tiers


def capability_rank(ranks: list[int], gflops: float, fleet_gflops: list[float]) -> int:
    """The rank of a device of ``gflops`` among a fleet of ``fleet_gflops``: ``ranks`` (ascending)
    in equal shares of the fleet, by how many devices are slower than this one."""
    if not fleet_gflops:
        return ranks[-1]
    slower = sum(1 for other in fleet_gflops if other < gflops)
    share = slower / len(fleet_gflops)
    return ranks[min(len(ranks) - 1, int(share * len(ranks)))]


@register
class HetLoRA(Configurator):
    """A rank per device: by capability, then never above what the device pruned itself to."""

    name = "hetlora"
    option_defaults = {"ranks": None}    # None: the reference's top rank, halved to a quarter

    def check_options(self, options: dict) -> dict:
        if options["ranks"] is not None:
            options["ranks"] = sorted(list_option("ranks", options["ranks"], minimum=1, integer=True))
        return options

    def ranks(self, job: JobView) -> list[int]:
        """The ranks on offer, ascending, none above the reference's top rank."""
        top = tier_ranks(job.reference_tier)[-1]
        if self.options["ranks"] is not None:
            return sorted({min(r, top) for r in self.options["ranks"]})
        return sorted({max(1, top // 4), max(1, top // 2), top})

    def tier_of(self, job: JobView, rank: int) -> dict:
        """The reference tier with every LoRA layer's rank at most ``rank``."""
        return sub_tier(job.reference_tier, tuple(min(rank, r) for r in tier_ranks(job.reference_tier)))

    def candidate_tiers(self, job: JobView) -> list[dict]:
        return unique_tiers(self.tier_of(job, r) for r in self.ranks(job))

    def pruned_to(self, device: DeviceView) -> int | None:
        """The lowest rank the device's accepted updates have used (None: none recorded)."""
        used = [t.effective_rank for t in device.history if t.submitted and t.effective_rank]
        return min(used) if used else None

    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        ranks = self.ranks(job)
        gflops, _ = reported_speed(device.capabilities)
        rank = capability_rank(ranks, gflops, [reported_speed(caps)[0] for caps in job.fleet])
        pruned = self.pruned_to(device)
        if pruned is not None:    # the largest offered rank not above it (the lowest if none is)
            rank = min(rank, max((r for r in ranks if r <= pruned), default=ranks[0]))
        return [TierChoice(self.tier_of(job, r), job.local_steps, f"r{r}") for r in reversed(ranks) if r <= rank]
