"""FedSpine-style configuration: an online bandit per device over (pruning ratio, LoRA rank) arms.

After FedSpine, which prunes and tunes iteratively and lets a multi-armed bandit pick each
device's pruning ratio and LoRA rank *without prior knowledge* of its compute or network: this
configurator never reads ``gflops`` or ``bandwidth_mbps``. All it learns comes from the device's
own past tasks in the job.

**Arms.** Every (pruning ratio, rank) with the ratio from option ``prune_ratios`` (those below
the reference's ratio dropped) and the rank from ``ranks`` (default ``[2, 4, R]``, ``R`` the
reference's top rank; ranks above ``R`` dropped). An arm's tier has the reference's LoRA depth,
each layer at ``min(rank, reference rank of that layer)``. Labels read ``p0.25-r4``.

**Reward.** A task's reward is what the arm bought per second of the work that recurs
(:func:`task_reward`): the loss improvement on a batch the device held out of its training
data (``probe_loss_before - probe_loss_after``; devices measure it because this configurator
asks, :attr:`wants_probe_loss`), over the task's seconds less its one-off artifact download
(compute and the adapter's transfer are paid every round; the artifact once per tier, so
counting it would make every newly tried arm look bad for a reason that never recurs). The
in-sample loss pair (the first batch again) is used only when a device reported no probe (a
shard too small to spare a batch). A task without a result (a dropout, a missed deadline)
earns 0, so an arm a device cannot finish looks bad. Rewards are
divided by the largest ``|reward|`` among the device's recent tasks (the discount's window),
so that the exploration constant means the same for every device and, since losses fall over
rounds and with them the rewards, for every stage of the job.

**Rule.** Discounted UCB1 (Garivier and Moulines): with the device's tasks weighted by
``discount ** age`` (age counted in the device's own tasks, newest 0), an arm's index is its
weighted mean normalized reward plus ``exploration * sqrt(2 ln(1 + n) / N_arm)``, ``N_arm`` its
weight and ``n`` the total. The discount forgets old rewards because the reward of an arm
drifts as training advances. Arms are returned best index first. The default exploration
(0.05) is small because the discount already makes an arm left alone look uncertain again (its
weight decays, so its bonus grows): on synthetic rewards (nine arms, one clearly best, noise
of a third of the best mean) larger constants with ``discount`` 0.98 spent most rounds
re-exploring.

**Untried arms first,** in a fixed order: lowest pruning ratio first, then lowest rank first.
Pruning ratio ascending is forced by monotone pruning (below): a device must see the less
pruned arms before the more pruned ones, because it can never come back to them. Within a
ratio the cheapest rank comes first: a small task is the likeliest to finish and report.

**Pruning from the tuned model** (option ``tuned_pruning``, on by default): the base of an arm
pruned beyond an unpruned reference is cut by the importance of the model as tuned so far: a
global adapter merged into the base decides which heads and channels stay (the kept weights
are still the base's, so every device keeps training one adapter over one base). A device that
moves up to a more pruned ratio gets a cut of the tuned model (the first mover's round's start
adapter; option ``prune_refresh_rounds`` re-cuts for movers after that many rounds), a device
that stays at its ratio keeps the base it has, and a device that can only ever run the pruned
tier (too little RAM for the others) takes whatever cut exists, from the untuned base if it
arrives first (``coordinator.services.pruning_sources``). Off: every ratio is pruned once from
the untuned base, before training.

**Iterative prune-and-tune** (option ``monotone_pruning``, on by default): once a device's most
recent task had pruning ratio ``p``, arms with a ratio below ``p`` are no longer offered. A
device keeps the smaller base it downloaded and tunes it further, as FedSpine prunes and tunes
in alternation; offering a larger base again would mean downloading it again and tuning an
adapter for a structure the device has left behind. Moving up a level is therefore a one-way
door, and an untried arm above the device's current level is not explored blindly: its index is
that of an arm seen once with reward 0 (as bad as a dropout, with one observation's
uncertainty). The device moves up when its current level's best arm no longer beats that, which
happens sooner when its tasks at this level drop out or improve little, and ``exploration``
sets how soon. With ``monotone_pruning`` off every untried arm counts as untried.

**Sparsity schedule** (option ``sparsity_schedule``, off by default): ``[[round, ratio], ...]``
raises the floor of the ratios on offer to ``ratio`` from ``round`` on, so the whole fleet
reaches a target sparsity in steps, as FedSpine's pruning and tuning alternate until the
model is as sparse as it will be deployed. Left to the bandit alone, the one-way door opens
rarely (once in 15 rounds of a pilot run) and the global adapter ends tuned on the unpruned
model while the devices that need the pruned one deploy it cut, untuned at that sparsity. At
each step every ratio at or above the step's is re-cut from the model tuned so far (the
step round's start adapter), devices already there included (:meth:`tuned_pruning_cut_since`),
so every device of a ratio trains one cut after the step. With ``rewind_lr`` (on by default)
the job's learning-rate schedule restarts at each step and runs over the rounds left (learning
rate rewinding, Renda et al. 2020): a cut is a new model for the adapter, and a cosine schedule
would otherwise tune it only with the small steps of the job's last rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.scheduling.configurator import Configurator, DeviceView, JobView, PastTask, TierChoice, register
from coordinator.scheduling.options import bool_option, list_option, number_option, schedule_option
from models.pruning import MAX_RATIO
from models.tier_algebra import sub_tier, tier_ranks, unique_tiers

#: Ranks offered by default below the reference's top rank (which is always offered).
DEFAULT_SMALL_RANKS = (2, 4)


@dataclass(frozen=True)
class Arm:
    """A (pruning ratio, rank) pair, its tier and its label."""

    prune_ratio: float
    rank: int
    tier: dict
    label: str


def task_reward(task: PastTask) -> float:
    """Held-out loss improvement per recurring second of ``task`` (in-sample when it has no
    probe); 0 for a task without a usable result."""
    probe = (task.probe_loss_before, task.probe_loss_after)
    before, after = probe if None not in probe else (task.loss_before, task.loss_after)
    if not task.submitted or any(v is None or not math.isfinite(v) for v in (before, after, task.seconds)) \
            or task.seconds <= 0:
        return 0.0
    recurring = task.seconds - task.one_off_seconds
    return (before - after) / (recurring if recurring > 0 else task.seconds)


@register
class FedSpine(Configurator):
    """Per-device discounted-UCB bandit over pruning ratio and LoRA rank."""

    name = "fedspine"
    wants_probe_loss = True
    option_defaults = {
        "prune_ratios": [0.0, 0.25, 0.5],
        "ranks": None,                 # None: [2, 4, R]
        "exploration": 0.05,
        "discount": 0.98,
        "monotone_pruning": True,
        "tuned_pruning": True,
        "prune_refresh_rounds": None,
        "sparsity_schedule": None,     # None: the bandit alone moves devices up
        "rewind_lr": True,             # with a sparsity schedule: restart the lr schedule at each step
    }

    @property
    def prunes_from_tuned_model(self) -> bool:
        return self.options["tuned_pruning"]

    @property
    def tuned_pruning_refresh_rounds(self) -> int | None:
        return self.options["prune_refresh_rounds"]

    def tuned_pruning_cut_since(self, round_number: int, prune_ratio: float) -> int | None:
        """The round of the newest sparsity-schedule step at or below ``prune_ratio`` that has
        begun by ``round_number``: a device at ``prune_ratio`` must train a cut at least that new."""
        return max((start for start, floor in self._steps_begun(round_number) if floor <= prune_ratio + 1e-9),
                   default=None)

    def lr_schedule_window(self, round_number: int, rounds: int) -> tuple[int, int]:
        """With a sparsity schedule and ``rewind_lr``: from the newest step begun by ``round_number``
        to the job's end; otherwise the whole job."""
        begun = self._steps_begun(round_number)
        if not self.options["rewind_lr"] or not begun:
            return 1, rounds
        first = begun[-1][0]
        return first, max(1, rounds - first + 1)

    def ratio_floor(self, round_number: int) -> float:
        """The lowest pruning ratio on offer in ``round_number`` (0 without a schedule)."""
        begun = self._steps_begun(round_number)
        return begun[-1][1] if begun else 0.0

    def _steps_begun(self, round_number: int) -> list[list]:
        """The sparsity schedule's ``[round, ratio]`` steps begun by ``round_number``, in order (the
        option is checked to rise in both)."""
        return [step for step in self.options["sparsity_schedule"] or () if step[0] <= round_number]

    def check_options(self, options: dict) -> dict:
        options["prune_ratios"] = sorted(list_option("prune_ratios", options["prune_ratios"],
                                                     minimum=0.0, maximum=MAX_RATIO))
        if options["ranks"] is not None:
            options["ranks"] = sorted(list_option("ranks", options["ranks"], minimum=1, integer=True))
        number_option("exploration", options["exploration"], minimum=0.0)
        number_option("discount", options["discount"], minimum=0.0, maximum=1.0, exclusive_minimum=True)
        bool_option("monotone_pruning", options["monotone_pruning"])
        bool_option("tuned_pruning", options["tuned_pruning"])
        bool_option("rewind_lr", options["rewind_lr"])
        if options["prune_refresh_rounds"] is not None:
            number_option("prune_refresh_rounds", options["prune_refresh_rounds"], minimum=1, integer=True)
        if options["sparsity_schedule"] is not None:
            options["sparsity_schedule"] = schedule_option("sparsity_schedule", options["sparsity_schedule"],
                                                           maximum=MAX_RATIO)
            beyond = [ratio for _, ratio in options["sparsity_schedule"] if ratio > max(options["prune_ratios"])]
            if beyond:
                raise ValueError(f"option 'sparsity_schedule' raises the ratio to {beyond[0]:g}, above every "
                                 f"ratio in 'prune_ratios' {options['prune_ratios']}")
        return options

    def arms(self, job: JobView) -> list[Arm]:
        """Every arm for ``job`` in exploration order (pruning ratio ascending, then rank ascending)."""
        reference = job.reference_tier
        ref_ranks = tier_ranks(reference)
        top = max(ref_ranks)
        floor = float(reference.get("prune_ratio", 0.0))
        ratios = [p for p in self.options["prune_ratios"] if p >= floor] or [floor]
        wanted = self.options["ranks"] or [*DEFAULT_SMALL_RANKS, top]
        ranks = sorted({r for r in wanted if r <= top}) or [top]
        return [Arm(prune_ratio=p, rank=r, label=f"p{p:g}-r{r}",
                    tier=sub_tier(reference, tuple(min(r, cap) for cap in ref_ranks), prune_ratio=p))
                for p in ratios for r in ranks]

    def candidate_tiers(self, job: JobView) -> list[dict]:
        return unique_tiers(arm.tier for arm in self.arms(job))

    def preparable_tiers(self, job: JobView) -> list[dict]:
        """With ``tuned_pruning`` (and an unpruned reference), only the arms at the lowest ratio,
        where every device starts (in round 1 nothing is tuned yet, so they are cut from the base
        alone): the more pruned ones are cut from the tuned model, exported when first handed out."""
        arms = self.arms(job)
        if not self.prunes_from_tuned_model or float(job.reference_tier.get("prune_ratio", 0.0)) > 0:
            return unique_tiers(arm.tier for arm in arms)
        lowest = min(arm.prune_ratio for arm in arms)
        return unique_tiers(arm.tier for arm in arms if arm.prune_ratio <= lowest)

    def allowed_arms(self, job: JobView, device: DeviceView) -> list[Arm]:
        """The arms ``device`` may get now: none below the schedule's floor and, with monotone
        pruning, none below its latest ratio."""
        arms = self.arms(job)
        floor = self.ratio_floor(job.round_number)
        if self.options["monotone_pruning"] and device.history:
            latest = max(device.history, key=lambda t: t.round)
            floor = max(floor, float(latest.tier.get("prune_ratio", 0.0)))
        allowed = [a for a in arms if a.prune_ratio >= floor - 1e-9]
        # The menu no longer reaches the device's ratio: the most pruned arms are the nearest.
        return allowed or [a for a in arms if a.prune_ratio == arms[-1].prune_ratio]

    def indices(self, job: JobView, device: DeviceView) -> dict[str, float]:
        """The UCB index of each allowed arm (``inf`` for an arm explored before any other)."""
        discount, exploration = self.options["discount"], self.options["exploration"]
        allowed = self.allowed_arms(job, device)
        labels = {a.label for a in self.arms(job)}
        tasks = sorted(device.history, key=lambda t: t.round)
        rewards = [task_reward(t) for t in tasks]
        window = len(rewards) if discount >= 1 else math.ceil(1 / (1 - discount))
        scale = max((abs(r) for r in rewards[-window:]), default=0.0)
        weight, total, tried = {}, {}, {}
        for age, (task, reward) in enumerate(zip(reversed(tasks), reversed(rewards))):
            if task.arm not in labels:
                continue  # an arm of another menu: nothing to compare it with
            w = discount ** age
            x = max(-1.0, min(1.0, reward / scale)) if scale > 0 else 0.0
            weight[task.arm] = weight.get(task.arm, 0.0) + w
            total[task.arm] = total.get(task.arm, 0.0) + w * x
            tried[task.arm] = tried.get(task.arm, 0) + 1
        n = sum(weight.values())
        level = min(a.prune_ratio for a in allowed)
        one_way = self.options["monotone_pruning"]
        out = {}
        for arm in allowed:
            if tried.get(arm.label, 0) == 0:
                if not one_way or arm.prune_ratio == level:
                    out[arm.label] = math.inf
                else:  # a one-way door: as if seen once with reward 0
                    out[arm.label] = exploration * math.sqrt(2 * math.log(1 + n))
                continue
            w = weight[arm.label]
            if w <= 0:  # seen so long ago that its weight underflowed: as good as untried
                out[arm.label] = math.inf
                continue
            out[arm.label] = total[arm.label] / w + exploration * math.sqrt(2 * math.log(1 + n) / w)
        return out

    def choose(self, job: JobView, device: DeviceView) -> list[TierChoice]:
        allowed = self.allowed_arms(job, device)
        index = self.indices(job, device)
        order = {a.label: i for i, a in enumerate(allowed)}
        # Highest index first; ties (among them every untried arm) in exploration order.
        ranked = sorted(allowed, key=lambda a: (-index[a.label], order[a.label]))
        return [TierChoice(tier=a.tier, local_steps=job.local_steps, arm=a.label) for a in ranked]
