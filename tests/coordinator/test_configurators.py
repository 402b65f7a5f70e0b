"""Tier configurators on their own: the registry and its options, the sub-tier relation, the cost
estimate, LEGEND's depth and rank choice, and FedSpine's bandit on synthetic rewards. Pure and
fast: no coordinator, no export."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.scheduling.configurator import DeviceView, JobView, PastTask, configurator_names, get_configurator
from coordinator.scheduling.fedspine import task_reward
from coordinator.scheduling.legend import calibrated_capabilities
from fleet.task_cost import (DEFAULT_BANDWIDTH_MBPS, adapter_bytes, estimate_task_seconds, estimate_task_time,
                             pruned_shape, step_flops)
from models.tier import Tier
from models.tier_algebra import is_sub_tier, normalized_tier, sub_tier, tier_ranks

# SmolLM2-135M's shape.
SHAPE = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
         "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}
LAYERS = SHAPE["num_hidden_layers"]
REFERENCE = Tier(lora_layers=8, lora_rank=8, quantize="int8", batch=4, seq=64).to_dict()
FAST = {"ram_mb": 12288, "gflops": 20.0, "bandwidth_mbps": 50.0, "runtimes": ["executorch"]}
MID = {"ram_mb": 6144, "gflops": 18.0, "bandwidth_mbps": 10.0, "runtimes": ["executorch"]}
SLOW = {"ram_mb": 2048, "gflops": 2.0, "bandwidth_mbps": 1.0, "runtimes": ["executorch"]}
FLEET = (FAST, MID, SLOW)


def make_job(reference=REFERENCE, local_steps=20, fleet=FLEET, round_number=1) -> JobView:
    return JobView(job_id=1, model="smollm2-135m", reference_tier=reference, local_steps=local_steps,
                   round_number=round_number, model_shape=SHAPE, fleet=fleet)


def task(round_number, choice=None, *, arm=None, tier=None, steps=20, submitted=True, gain=1.0, seconds=10.0,
         compute_seconds=None, upload_bytes=None, download_bytes=None) -> PastTask:
    """A past task; ``gain`` is its loss improvement (a dropout has none)."""
    return PastTask(round=round_number, arm=arm or choice.arm, tier=tier or choice.tier,
                    local_steps=steps if choice is None else choice.local_steps, submitted=submitted,
                    loss_before=5.0 if submitted else None, loss_after=5.0 - gain if submitted else None,
                    seconds=seconds if submitted else None, compute_seconds=compute_seconds if submitted else None,
                    upload_bytes=upload_bytes, download_bytes=download_bytes)


def fedspine_arm(label: str, job: JobView | None = None):
    return next(a for a in get_configurator("fedspine").arms(job or make_job()) if a.label == label)


# --- registry and options ------------------------------------------------------------------------

def test_registry_knows_the_three_configurators_and_refuses_unknown_names():
    assert {"uniform", "legend", "fedspine", "hetlora"} <= set(configurator_names())
    with pytest.raises(KeyError, match="unknown configurator 'nope'.*fedspine.*legend.*uniform"):
        get_configurator("nope")


@pytest.mark.parametrize("name, options, message", [
    ("uniform", {"depths": [1]}, "unknown option"),
    ("legend", {"dephts": [1]}, "unknown option.*'dephts'.*takes: .*depths"),
    ("legend", {"depths": []}, "depths"),
    ("legend", {"depths": [0, 2]}, r"depths\[0\]"),
    ("legend", {"depths": [1.5]}, "integer"),
    ("legend", {"slack": 0}, "slack"),
    ("legend", {"target_seconds": -3}, "target_seconds"),
    ("legend", {"min_steps": True}, "min_steps"),
    ("legend", {"bottom_rank_fraction": 1.5}, "bottom_rank_fraction"),
    ("fedspine", {"discount": 0.0}, "discount"),
    ("fedspine", {"discount": 1.2}, "discount"),
    ("fedspine", {"exploration": -0.1}, "exploration"),
    ("fedspine", {"exploration": float("nan")}, "exploration"),
    ("fedspine", {"prune_ratios": [0.0, 0.95]}, "prune_ratios"),
    ("fedspine", {"ranks": [0]}, "ranks"),
    ("fedspine", {"monotone_pruning": "yes"}, "monotone_pruning"),
    ("fedspine", ["discount", 0.9], "must be an object"),
])
def test_bad_options_are_refused_with_the_option_named(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_configurator(name, options)


def test_options_are_normalized():
    legend = get_configurator("legend", {"depths": [8, 2, 2]})
    assert legend.options["depths"] == [2, 8] and legend.options["slack"] == 1.0
    fedspine = get_configurator("fedspine", {"prune_ratios": [0.5, 0, 0.5]})
    assert fedspine.options["prune_ratios"] == [0, 0.5] and fedspine.options["monotone_pruning"] is True


# --- sub-tiers and the cost estimate -------------------------------------------------------------

def test_sub_tier_relation():
    assert is_sub_tier(REFERENCE, REFERENCE)
    assert is_sub_tier(sub_tier(REFERENCE, (8, 8)), REFERENCE)
    assert is_sub_tier(sub_tier(REFERENCE, (2, 4, 8), prune_ratio=0.5), REFERENCE)
    assert not is_sub_tier(sub_tier(REFERENCE, (8,) * 9), REFERENCE)                  # deeper
    assert not is_sub_tier(sub_tier(REFERENCE, (8, 16)), REFERENCE)                   # a rank above R
    assert not is_sub_tier(dict(REFERENCE, quantize="none"), REFERENCE)
    assert not is_sub_tier(dict(REFERENCE, seq=128), REFERENCE)
    assert not is_sub_tier(dict(REFERENCE, lora_targets=["q_proj", "v_proj", "o_proj"]), REFERENCE)
    assert is_sub_tier(dict(REFERENCE, lora_targets=["v_proj"]), REFERENCE)
    assert not is_sub_tier(dict(REFERENCE, lora_rank=-1), REFERENCE)                   # invalid
    assert not is_sub_tier(REFERENCE, sub_tier(REFERENCE, (8,), prune_ratio=0.25))    # less pruned
    # Ranks are compared layer by layer, counted from the top.
    rising = sub_tier(REFERENCE, (2, 4, 8))
    assert is_sub_tier(sub_tier(REFERENCE, (4, 8)), rising)
    assert is_sub_tier(sub_tier(REFERENCE, (2, 2, 2)), rising)
    assert not is_sub_tier(sub_tier(REFERENCE, (4, 4, 4)), rising)


def test_sub_tier_writes_one_layout_one_way():
    assert tier_ranks(sub_tier(REFERENCE, (4, 4))) == (4, 4)
    assert sub_tier(REFERENCE, (4, 4))["rank_pattern"] == "uniform"
    explicit = sub_tier(REFERENCE, (2, 5, 8))
    assert explicit["rank_pattern"] == [2, 5, 8] and explicit["lora_rank"] == 8
    assert explicit == normalized_tier(explicit)


def test_pruned_shape_follows_the_pruning_plans():
    # SmolLM2 at 0.25 keeps 3 groups of 2 heads and 75% of the MLP; 0.5 keeps 2 groups of 2.
    quarter = pruned_shape(SHAPE, 0.25)
    counts = lambda s: (s["num_key_value_heads"], s["num_attention_heads"], s["intermediate_size"])  # noqa: E731
    assert counts(quarter) == (3, 6, 1152)
    assert counts(pruned_shape(SHAPE, 0.5)) == (2, 4, 768)
    assert pruned_shape(SHAPE, 0.5, "layers")["num_hidden_layers"] == 15
    assert pruned_shape(SHAPE, 0.0) == SHAPE


def test_task_estimate_by_hand():
    one_layer = sub_tier(REFERENCE, (8,))
    # q_proj 576 -> 576 and v_proj 576 -> 192 at rank 8, float32.
    assert adapter_bytes(one_layer, SHAPE) == 8 * ((576 + 576) + (576 + 192)) * 4
    estimate = estimate_task_time(one_layer, 20, SHAPE, FAST)
    assert estimate.compute_seconds == pytest.approx(20 * step_flops(one_layer, SHAPE) / 20e9)
    assert estimate.transfer_seconds == pytest.approx(2 * 61440 * 8 / 50e6)
    no_link = {"gflops": 20.0}
    assert estimate_task_seconds(one_layer, 20, SHAPE, no_link) == pytest.approx(
        estimate_task_seconds(one_layer, 20, SHAPE, dict(no_link, bandwidth_mbps=DEFAULT_BANDWIDTH_MBPS)))
    # Deeper, higher-ranked or less pruned costs more.
    costs = [estimate_task_seconds(sub_tier(REFERENCE, (8,) * k), 20, SHAPE, FAST) for k in (1, 2, 4, 8)]
    assert costs == sorted(costs) and costs[0] < costs[-1]
    pruned = [estimate_task_seconds(sub_tier(REFERENCE, (8,) * 8, prune_ratio=p), 20, SHAPE, FAST)
              for p in (0.5, 0.25, 0.0)]
    assert pruned == sorted(pruned) and pruned[0] < pruned[-1]


# --- every configurator hands out sub-tiers of the reference --------------------------------------

def _devices(job):
    first = get_configurator("legend").choose(job, DeviceView(9, FAST))[0]
    yield DeviceView(1, FAST)
    yield DeviceView(2, MID)
    yield DeviceView(3, SLOW)
    yield DeviceView(4, {"ram_mb": 1024, "runtimes": ["executorch"]})     # no measurements at all
    yield DeviceView(5, FAST, (task(0, first, seconds=500.0), task(1, first, submitted=False)))
    pruned = next(a for a in get_configurator("fedspine").arms(job) if a.prune_ratio == 0.25)
    yield DeviceView(6, MID, (task(0, arm=pruned.label, tier=pruned.tier),))


@pytest.mark.parametrize("name", ["uniform", "legend", "fedspine", "hetlora"])
@pytest.mark.parametrize("reference", [REFERENCE, sub_tier(REFERENCE, (1, 2, 3, 4, 6, 8)),
                                       Tier(lora_layers=2, lora_rank=2, seq=32, batch=2).to_dict()])
def test_every_tier_is_a_valid_sub_tier_of_the_reference(name, reference):
    job = make_job(reference)
    configurator = get_configurator(name)
    candidates = configurator.candidate_tiers(job)
    keys = [repr(sorted(t.items())) for t in candidates]
    assert len(keys) == len(set(keys))
    for tier in candidates:
        assert is_sub_tier(tier, reference)
        Tier.from_dict(tier).validate(LAYERS)
    for device in _devices(job):
        choices = configurator.choose(job, device)
        assert choices
        for choice in choices:
            assert choice.tier in candidates and choice.arm
            assert 1 <= choice.local_steps <= job.local_steps
            assert choice.tier == Tier.from_dict(choice.tier).to_dict()   # a full Tier.to_dict()


def test_uniform_gives_everyone_the_reference():
    job = make_job()
    for device in _devices(job):
        (choice,) = get_configurator("uniform").choose(job, device)
        assert choice.tier == REFERENCE and choice.local_steps == 20


# --- LEGEND ---------------------------------------------------------------------------------------

# The depth mechanics are tested with every depth allowed (min_depth 1); the learnable minimum below.
SHALLOW_OK = {"min_depth": 1}


def test_legend_ranks_rise_towards_the_output():
    legend = get_configurator("legend", SHALLOW_OK)
    configs = legend.configs(make_job())
    assert [c.depth for c in configs] == [1, 2, 4, 8]
    deepest = tier_ranks(configs[-1].tier)
    assert deepest[0] == 2 and deepest[-1] == 8 and list(deepest) == sorted(deepest)
    for c in configs:  # a shallower tier is the top of the deepest one
        assert tier_ranks(c.tier) == deepest[len(deepest) - c.depth:]
        assert c.arm == f"k{c.depth}-rising8"


def test_legend_gives_a_slow_device_a_smaller_tier_than_a_fast_one():
    job, legend = make_job(), get_configurator("legend", SHALLOW_OK)
    fast, mid, slow = (legend.choose(job, DeviceView(i, caps)) for i, caps in enumerate(FLEET))
    depth = lambda choice: Tier.from_dict(choice.tier).lora_layers  # noqa: E731
    assert depth(fast[0]) == 8 and fast[0].local_steps == 20
    assert [depth(c) for c in fast] == [8, 4, 2, 1]                  # fallbacks, shallower each time
    assert depth(fast[0]) > depth(mid[0]) >= depth(slow[0])
    assert mid[0].local_steps == 20
    # Ten times slower than the target allows: the shallowest tier with fewer steps.
    assert [depth(c) for c in slow] == [1] and 1 <= slow[0].local_steps < 20
    target = legend.target_seconds(job, DeviceView(3, SLOW))
    assert estimate_task_seconds(slow[0].tier, slow[0].local_steps, SHAPE, SLOW) <= target
    assert estimate_task_seconds(slow[0].tier, slow[0].local_steps + 1, SHAPE, SLOW) > target
    # min_steps bounds the cut; a generous target lets everyone train the deepest tier.
    assert get_configurator("legend", {"min_steps": 15, **SHALLOW_OK}).choose(job, DeviceView(3, SLOW))[0].local_steps == 15
    generous = get_configurator("legend", {"target_seconds": 1e6, **SHALLOW_OK})
    assert depth(generous.choose(job, DeviceView(3, SLOW))[0]) == 8


def test_legend_never_hands_out_a_tier_below_its_learnable_minimum():
    job = make_job()                                        # reference depth 8: the minimum is 4
    legend = get_configurator("legend")
    assert [c.depth for c in legend.configs(job)] == [4, 8]
    for caps in (*FLEET, {"ram_mb": 1024, "gflops": 0.01, "bandwidth_mbps": 0.1, "runtimes": ["executorch"]}):
        choices = legend.choose(job, DeviceView(1, caps))
        assert all(Tier.from_dict(c.tier).lora_layers >= 4 for c in choices)
    # far too slow for even the minimum: the minimum depth with fewer steps, not a shallower tier
    hopeless = legend.choose(job, DeviceView(1, SLOW))
    assert [Tier.from_dict(c.tier).lora_layers for c in hopeless] == [4] and hopeless[0].local_steps < 20
    assert [c.depth for c in get_configurator("legend", {"min_depth": 2}).configs(job)] == [2, 4, 8]
    assert [c.depth for c in get_configurator("legend", {"min_depth": 99}).configs(job)] == [8]
    with pytest.raises(ValueError, match="min_depth"):
        get_configurator("legend", {"min_depth": 0})


def test_legend_target_defaults_to_the_fastest_device_on_the_reference_tier():
    job = make_job()
    fastest = estimate_task_seconds(REFERENCE, 20, SHAPE, FAST)
    slow = DeviceView(1, SLOW)
    assert get_configurator("legend").target_seconds(job, slow) == pytest.approx(fastest)
    assert get_configurator("legend", {"slack": 2}).target_seconds(job, slow) == pytest.approx(2 * fastest)
    # With no fleet registered the device itself is the fastest.
    alone = make_job(fleet=())
    assert get_configurator("legend").target_seconds(alone, slow) == pytest.approx(
        estimate_task_seconds(REFERENCE, 20, SHAPE, SLOW))


@pytest.mark.parametrize("with_compute_seconds", [True, False])
def test_legend_calibrates_from_the_seconds_tasks_really_took(with_compute_seconds):
    job, legend = make_job(), get_configurator("legend", SHALLOW_OK)
    first = legend.choose(job, DeviceView(1, FAST))[0]
    assert Tier.from_dict(first.tier).lora_layers == 8
    estimate = estimate_task_time(first.tier, first.local_steps, SHAPE, FAST)
    # It took five times longer than its capabilities promised.
    history = tuple(task(r, first, seconds=5 * estimate.total,
                         compute_seconds=5 * estimate.compute_seconds if with_compute_seconds else None)
                    for r in range(3))
    again = legend.choose(job, DeviceView(1, FAST, history))[0]
    smaller = (Tier.from_dict(again.tier).lora_layers, again.local_steps) < (8, first.local_steps)
    assert smaller and Tier.from_dict(again.tier).lora_layers == 1 and again.local_steps < 20
    # A device whose tasks took what was estimated keeps its tier.
    on_time = tuple(task(r, first, seconds=estimate.total) for r in range(3))
    assert legend.choose(job, DeviceView(1, FAST, on_time))[0] == first
    # Dropouts carry no time: they do not calibrate anything.
    gone = tuple(task(r, first, submitted=False) for r in range(3))
    assert legend.choose(job, DeviceView(1, FAST, gone))[0] == first


def test_legend_target_is_on_the_scale_of_measured_times():
    """A fleet that trains five times slower than its reported peaks, every device alike: a
    device's calibrated estimate and the target are both five times longer, so the fast device
    keeps the deepest tier (comparing calibrated times with a target from reported peaks would
    give every device the shallowest one)."""
    from dataclasses import replace

    legend = get_configurator("legend")
    first = legend.choose(make_job(), DeviceView(1, FAST))[0]
    estimate = estimate_task_time(first.tier, first.local_steps, SHAPE, FAST)
    history = tuple(task(r, first, seconds=5 * estimate.total, compute_seconds=5 * estimate.compute_seconds)
                    for r in range(3))
    slow_fleet = replace(make_job(), fleet_compute_slowdown=5.0)
    assert legend.target_seconds(slow_fleet, DeviceView(1, FAST)) > 4 * legend.target_seconds(make_job(),
                                                                                               DeviceView(1, FAST))
    assert legend.choose(slow_fleet, DeviceView(1, FAST, history))[0] == first


def test_legend_keeps_a_devices_depth_unless_another_fits_clearly_better():
    """Hysteresis: a new depth is a new download, so estimates near the target do not flip it."""
    job = make_job()                                                  # depths 4 and 8 (min depth 4)
    configs = {c.depth: c for c in get_configurator("legend").configs(job)}
    secs = {d: estimate_task_seconds(c.tier, 20, SHAPE, MID) for d, c in configs.items()}
    assert secs[4] < secs[8]

    def depth_after(last_depth, target, margin=1.25):
        legend = get_configurator("legend", {"target_seconds": target, "switch_margin": margin})
        history = (task(1, arm=configs[last_depth].arm, tier=configs[last_depth].tier, seconds=None),) \
            if last_depth else ()
        return Tier.from_dict(legend.choose(job, DeviceView(1, MID, history))[0].tier).lora_layers

    # Depth 8 a little over the target: a device that trained 8 keeps it; a new device gets 4.
    assert depth_after(8, secs[8] / 1.1) == 8 and depth_after(None, secs[8] / 1.1) == 4
    assert depth_after(8, secs[8] / 1.1, margin=1.0) == 4            # no hysteresis: it flips
    # Well over (more than the margin): down to 4.
    assert depth_after(8, secs[8] / 1.5) == 4
    # Depth 8 just fits: a device at 4 stays at 4 until 8 fits with the margin to spare.
    assert depth_after(4, secs[8] * 1.1) == 4 and depth_after(None, secs[8] * 1.1) == 8
    assert depth_after(4, secs[8] * 1.3) == 8
    with pytest.raises(ValueError, match="switch_margin"):
        get_configurator("legend", {"switch_margin": 0.5})


def test_legend_measures_bandwidth_from_bytes_moved():
    legend = get_configurator("legend")
    first = legend.choose(make_job(), DeviceView(1, FAST))[0]
    # 1 MB each way in 8 s besides 10 s of compute: 2 Mbit/s.
    history = (task(0, first, seconds=18.0, compute_seconds=10.0, upload_bytes=1_000_000, download_bytes=1_000_000),)
    caps = calibrated_capabilities(DeviceView(1, FAST, history), SHAPE)
    assert caps["bandwidth_mbps"] == pytest.approx(2.0)
    estimate = estimate_task_time(first.tier, first.local_steps, SHAPE, FAST)
    assert caps["gflops"] == pytest.approx(FAST["gflops"] * estimate.compute_seconds / 10.0)


# --- FedSpine --------------------------------------------------------------------------------------

class NoSpeedCapabilities(dict):
    """Capabilities that fail a test if anyone reads the device's speed."""

    def __getitem__(self, key):
        assert key not in ("gflops", "bandwidth_mbps"), f"FedSpine read {key}"
        return super().__getitem__(key)

    def get(self, key, default=None):
        assert key not in ("gflops", "bandwidth_mbps"), f"FedSpine read {key}"
        return super().get(key, default)


def run_bandit(configurator, job, rewards, rounds, *, seed=0, noise=0.3, dropouts=()):
    """Play ``rounds`` rounds for one device; ``rewards[arm]`` is the mean loss gain per second."""
    rng = np.random.default_rng(seed)
    history, picks = [], []
    capabilities = NoSpeedCapabilities(ram_mb=4096, gflops=50.0, bandwidth_mbps=100.0, runtimes=["executorch"])
    for r in range(rounds):
        choice = configurator.choose(job, DeviceView(7, capabilities, tuple(history)))[0]
        gain = rng.normal(rewards[choice.arm], noise) * 10.0
        history.append(task(r, choice, gain=gain, seconds=10.0, submitted=choice.arm not in dropouts))
        picks.append(choice.arm)
    return picks


def test_task_reward_is_loss_gain_per_second_and_zero_without_a_result():
    arm = fedspine_arm("p0-r4")
    assert task_reward(task(0, arm=arm.label, tier=arm.tier, gain=2.0, seconds=4.0)) == 0.5
    assert task_reward(task(0, arm=arm.label, tier=arm.tier, submitted=False)) == 0.0
    assert task_reward(task(0, arm=arm.label, tier=arm.tier, gain=float("nan"))) == 0.0


def test_task_reward_prefers_the_held_out_probe_and_leaves_out_the_one_off_download():
    in_sample = PastTask(round=1, arm="a", tier=REFERENCE, local_steps=20, submitted=True,
                         loss_before=5.0, loss_after=3.0, seconds=10.0)
    assert task_reward(in_sample) == pytest.approx(0.2)
    probed = PastTask(round=1, arm="a", tier=REFERENCE, local_steps=20, submitted=True, loss_before=5.0,
                      loss_after=3.0, seconds=10.0, probe_loss_before=4.0, probe_loss_after=3.5)
    assert task_reward(probed) == pytest.approx(0.05)            # memorizing the first batch earns nothing
    first_of_tier = PastTask(round=1, arm="a", tier=REFERENCE, local_steps=20, submitted=True, loss_before=5.0,
                             loss_after=3.0, seconds=10.0, probe_loss_before=4.0, probe_loss_after=3.5,
                             one_off_seconds=8.0)
    assert task_reward(first_of_tier) == pytest.approx(0.25)     # 0.5 over the 2 s that recur
    odd = PastTask(round=1, arm="a", tier=REFERENCE, local_steps=20, submitted=True, loss_before=5.0,
                   loss_after=3.0, seconds=10.0, one_off_seconds=10.0)
    assert task_reward(odd) == pytest.approx(0.2)                # nothing recurring left: the whole task


def test_fedspine_arms():
    arms = get_configurator("fedspine").arms(make_job())
    assert [a.label for a in arms] == ["p0-r2", "p0-r4", "p0-r8", "p0.25-r2", "p0.25-r4", "p0.25-r8",
                                       "p0.5-r2", "p0.5-r4", "p0.5-r8"]
    for a in arms:  # reference depth, the arm's rank, the arm's pruning
        t = Tier.from_dict(a.tier)
        assert (t.lora_layers, tier_ranks(a.tier), t.prune_ratio) == (8, (a.rank,) * 8, a.prune_ratio)
    capped = get_configurator("fedspine", {"ranks": [2, 4, 16]}).arms(make_job())
    assert sorted({a.rank for a in capped}) == [2, 4]


def test_fedspine_explores_untried_arms_first_in_a_fixed_order():
    job = make_job()
    rewards = {"p0-r2": 5.0}  # the first arm is excellent: untried arms are still tried first
    rewards.update({a.label: 0.1 for a in get_configurator("fedspine").arms(job) if a.label != "p0-r2"})
    free = run_bandit(get_configurator("fedspine", {"monotone_pruning": False}), job, rewards, 9, noise=0.0)
    assert free == [a.label for a in get_configurator("fedspine").arms(job)]
    # With monotone pruning only the device's current level counts as untried.
    assert run_bandit(get_configurator("fedspine"), job, rewards, 3, noise=0.0) == ["p0-r2", "p0-r4", "p0-r8"]
    fresh = get_configurator("fedspine").choose(job, DeviceView(1, NoSpeedCapabilities()))
    assert [c.arm for c in fresh][:3] == ["p0-r2", "p0-r4", "p0-r8"]


def test_fedspine_pruning_never_goes_back_down():
    job, fedspine = make_job(), get_configurator("fedspine")
    a0, a25, a50 = fedspine_arm("p0-r8"), fedspine_arm("p0.25-r2"), fedspine_arm("p0.5-r4")
    history = (task(0, arm=a0.label, tier=a0.tier, gain=3.0), task(1, arm=a25.label, tier=a25.tier, gain=0.1))
    offered = fedspine.choose(job, DeviceView(1, NoSpeedCapabilities(), history))
    assert {c.arm for c in offered} == {"p0.25-r2", "p0.25-r4", "p0.25-r8", "p0.5-r2", "p0.5-r4", "p0.5-r8"}
    assert all(c.tier["prune_ratio"] >= 0.25 for c in offered)
    # The latest task decides, dropout or not, whatever order the history comes in.
    history = (task(5, arm=a50.label, tier=a50.tier, submitted=False),) + history
    assert {c.tier["prune_ratio"] for c in fedspine.choose(job, DeviceView(1, {}, history))} == {0.5}
    free = get_configurator("fedspine", {"monotone_pruning": False})
    assert len(free.choose(job, DeviceView(1, {}, history))) == 9
    # Over a whole simulated run, the ratio handed out never decreases.
    rewards = {a.label: 0.5 for a in fedspine.arms(job)}
    picks = run_bandit(fedspine, job, rewards, 80, dropouts={"p0-r2", "p0-r4", "p0-r8", "p0.25-r8"})
    ratios = [fedspine_arm(p).prune_ratio for p in picks]
    assert ratios == sorted(ratios) and ratios[-1] > 0


def test_fedspine_sparsity_schedule_raises_the_floor_of_every_device_and_re_cuts_at_each_step():
    fedspine = get_configurator("fedspine", {"sparsity_schedule": [[4, 0.25], [8, 0.5]]})
    fresh = DeviceView(1, NoSpeedCapabilities())
    offered = {r: {c.tier["prune_ratio"] for c in fedspine.choose(make_job(round_number=r), fresh)}
               for r in (1, 3, 4, 7, 8, 12)}
    assert offered == {1: {0, 0.25, 0.5}, 3: {0, 0.25, 0.5}, 4: {0.25, 0.5}, 7: {0.25, 0.5}, 8: {0.5}, 12: {0.5}}
    # The bandit still chooses above the floor: a device already at p0.5 stays there in round 4.
    a50 = fedspine_arm("p0.5-r4")
    at_half = DeviceView(1, NoSpeedCapabilities(), (task(3, arm=a50.label, tier=a50.tier),))
    assert {c.tier["prune_ratio"] for c in fedspine.choose(make_job(round_number=4), at_half)} == {0.5}
    # Each step asks for a cut at least as new as itself at its ratio and every ratio above it.
    assert [fedspine.tuned_pruning_cut_since(r, 0.5) for r in (3, 4, 7, 8, 15)] == [None, 4, 4, 8, 8]
    assert [fedspine.tuned_pruning_cut_since(r, 0.25) for r in (3, 4, 8)] == [None, 4, 4]
    assert get_configurator("fedspine").tuned_pruning_cut_since(9, 0.5) is None     # no schedule: any cut
    assert fedspine.ratio_floor(1) == 0 and fedspine.ratio_floor(9) == 0.5


def test_fedspine_rewinds_the_learning_rate_schedule_at_each_sparsity_step():
    from models.lr_schedule import lr_for_round

    stepped = get_configurator("fedspine", {"sparsity_schedule": [[4, 0.5]]})
    assert [stepped.lr_schedule_window(r, 10) for r in (1, 3, 4, 10)] == [(1, 10), (1, 10), (4, 7), (4, 7)]
    assert get_configurator("fedspine", {"sparsity_schedule": [[4, 0.5]], "rewind_lr": False}) \
        .lr_schedule_window(5, 10) == (1, 10)
    assert get_configurator("fedspine").lr_schedule_window(5, 10) == (1, 10)
    assert get_configurator("uniform").lr_schedule_window(5, 10) == (1, 10)
    # the step's round trains at the full rate again, the last round near the floor
    first, span = stepped.lr_schedule_window(4, 10)
    assert lr_for_round(1.0, "cosine", 0.0, 4 - first + 1, span) == 1.0
    with pytest.raises(ValueError, match="rewind_lr"):
        get_configurator("fedspine", {"rewind_lr": "yes"})


@pytest.mark.parametrize("schedule, message", [
    ([[4, 0.5], [2, 0.25]], "must come after"),
    ([[2, 0.5], [4, 0.25]], "must come after"),
    ([[0, 0.5]], r"round' must be >= 1"),
    ([[3, 0.75]], "above every ratio"),
    ([3, 0.5], "must be a \\[round, value\\] pair"),
    ([], "non-empty list"),
])
def test_fedspine_sparsity_schedule_is_checked(schedule, message):
    with pytest.raises(ValueError, match=message):
        get_configurator("fedspine", {"prune_ratios": [0, 0.25, 0.5], "sparsity_schedule": schedule})


def test_fedspine_a_device_that_keeps_dropping_out_prunes_more_and_one_that_delivers_does_not():
    job, fedspine = make_job(), get_configurator("fedspine")
    rewards = {a.label: 0.5 for a in fedspine.arms(job)}
    rewards["p0-r8"] = 1.0
    delivering = run_bandit(fedspine, job, rewards, 60)
    assert all(p.startswith("p0-") for p in delivering)
    failing = run_bandit(fedspine, job, rewards, 60, dropouts={"p0-r2", "p0-r4", "p0-r8"})
    assert not any(p.startswith("p0-") for p in failing[-30:])


def test_fedspine_dropouts_penalise_an_arm():
    job, fedspine = make_job(), get_configurator("fedspine")
    r2, r4, r8 = (fedspine_arm(f"p0-r{r}") for r in (2, 4, 8))

    def history(r8_submits):
        past = []
        for k in range(4):
            past += [task(3 * k, arm=r2.label, tier=r2.tier, gain=1.0),
                     task(3 * k + 1, arm=r4.label, tier=r4.tier, gain=1.2),
                     task(3 * k + 2, arm=r8.label, tier=r8.tier, gain=2.0, submitted=r8_submits)]
        return tuple(past)

    order = [c.arm for c in fedspine.choose(job, DeviceView(1, {}, history(True)))]
    assert order[0] == "p0-r8"
    order = [c.arm for c in fedspine.choose(job, DeviceView(1, {}, history(False)))]
    assert order[0] == "p0-r4" and order.index("p0-r8") > order.index("p0-r2")


def test_fedspine_prefers_the_faster_arm_when_arms_differ_only_in_speed():
    """A simulated device whose arms buy the same held-out loss gain (noisy) but take different
    times: the bandit, told nothing about speeds, settles on the fastest; the first task on each
    arm also paid a one-off download that must not count against it."""
    from dataclasses import replace

    job = make_job()
    fedspine = get_configurator("fedspine", {"monotone_pruning": False})
    seconds = {arm.label: 10.0 * (1 + i % 3) for i, arm in enumerate(fedspine.arms(job))}
    fastest = {label for label, s in seconds.items() if s == 10.0}
    rng = np.random.default_rng(7)
    history, picks, seen = [], [], set()
    for r in range(150):
        choice = fedspine.choose(job, DeviceView(7, {}, tuple(history)))[0]
        gain = max(0.0, rng.normal(1.0, 0.3))
        one_off = 0.0 if choice.arm in seen else 500.0       # the artifact, once per tier
        seen.add(choice.arm)
        past = task(r, choice, gain=0.0, seconds=seconds[choice.arm] + one_off)
        history.append(replace(past, probe_loss_before=3.0, probe_loss_after=3.0 - gain, one_off_seconds=one_off))
        picks.append(choice.arm)
    late = picks[-50:]
    assert sum(arm in fastest for arm in late) >= 40, late


def test_fedspine_converges_to_the_best_arm():
    job = make_job()
    fedspine = get_configurator("fedspine", {"monotone_pruning": False})
    labels = [a.label for a in fedspine.arms(job)]
    rng = np.random.default_rng(2024)
    rewards = {label: float(rng.uniform(0.3, 0.6)) for label in labels}
    rewards["p0.25-r4"] = 1.0
    picks = run_bandit(fedspine, job, rewards, 200, seed=1)
    assert picks[-50:].count("p0.25-r4") >= 40
    assert picks[:9] == labels  # every arm tried once first


def test_fedspine_follows_the_rewards_not_its_order():
    job = make_job()
    fedspine = get_configurator("fedspine", {"prune_ratios": [0.0], "ranks": [2, 8]})
    picks = run_bandit(fedspine, job, {"p0-r2": 1.0, "p0-r8": 0.5}, 200, seed=3)
    assert picks[-50:].count("p0-r2") >= 40
    picks = run_bandit(fedspine, job, {"p0-r2": 0.5, "p0-r8": 1.0}, 200, seed=3)
    assert picks[-50:].count("p0-r8") >= 40


def test_fedspine_is_a_function_of_its_inputs():
    job = make_job()
    a = fedspine_arm("p0-r4")
    device = DeviceView(1, {}, (task(0, arm=a.label, tier=a.tier, gain=1.0),))
    first = get_configurator("fedspine").choose(job, device)
    assert get_configurator("fedspine").choose(job, device) == first


# --- HetLoRA: a rank per device by capability, lowered for good by the device's own pruning ----------

def hetlora_past(rank: int | None, round_number=1, submitted=True) -> PastTask:
    return PastTask(round=round_number, arm=f"r{rank}", tier=sub_tier(REFERENCE, (8,) * 8), local_steps=20,
                    submitted=submitted, effective_rank=rank if submitted else None)


def test_hetlora_offers_the_reference_rank_halved_to_a_quarter_and_ranks_devices_by_capability():
    job, configurator = make_job(), get_configurator("hetlora")
    assert configurator.ranks(job) == [2, 4, 8]
    assert [tier_ranks(t) for t in configurator.candidate_tiers(job)] == [(2,) * 8, (4,) * 8, (8,) * 8]
    ranks_of = {name: [tier_ranks(c.tier)[-1] for c in configurator.choose(job, DeviceView(1, caps))]
                for name, caps in (("fast", FAST), ("mid", MID), ("slow", SLOW))}
    # the slowest third gets the lowest rank, the fastest the highest; lower ranks are fallbacks
    assert ranks_of == {"fast": [8, 4, 2], "mid": [4, 2], "slow": [2]}
    assert get_configurator("hetlora", {"ranks": [16, 1, 4]}).ranks(job) == [1, 4, 8]   # clipped to the reference


def test_hetlora_never_hands_a_device_more_than_the_rank_it_pruned_itself_to():
    job, configurator = make_job(), get_configurator("hetlora")
    def top(history):
        return tier_ranks(configurator.choose(job, DeviceView(1, FAST, tuple(history)))[0].tier)[-1]
    assert top([hetlora_past(8)]) == 8
    assert top([hetlora_past(8), hetlora_past(4, 2)]) == 4
    assert top([hetlora_past(3, 1), hetlora_past(8, 2)]) == 2        # one-way, and to an offered rank
    assert top([hetlora_past(None, 1, submitted=False)]) == 8         # a dropout says nothing
    assert top([hetlora_past(1)]) == 2                               # never below the lowest offered


def test_hetlora_refuses_bad_ranks():
    with pytest.raises(ValueError, match=r"ranks\[0\]"):
        get_configurator("hetlora", {"ranks": [0, 2]})
