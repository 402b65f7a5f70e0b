"""Feature merging's label mix and batch-size regulation, on hand-made worker states (pure)."""

from __future__ import annotations

import math

import pytest

from coordinator.split.batch_regulation import WorkerState, plan_of, regulate, worker_seconds
from coordinator.split.merging import kl_from_global, merged_distribution

UNIFORM = {"a": 1, "b": 1, "c": 1, "d": 1}
SIZES = (2, 4, 8, 16)


def test_the_merged_label_mix_weights_each_worker_by_its_batch():
    mix = merged_distribution({"x": 4, "y": 12, "z": 0}, {"x": {"a": 1}, "y": {"b": 3, "c": 1}, "z": {"d": 1}})
    assert mix == pytest.approx({"a": 0.25, "b": 0.5625, "c": 0.1875})
    assert kl_from_global({"a": 0.5, "b": 0.5}, {"a": 1, "b": 1}) == pytest.approx(0.0, abs=1e-9)
    assert kl_from_global({"a": 1.0}, {"a": 1, "b": 1}) > 2.0       # a missing class costs most
    with pytest.raises(ValueError, match="non-negative"):
        merged_distribution({"x": 2}, {"x": {"a": -1}})


def test_regulated_batches_follow_speed_and_cut_the_idle_time():
    workers = {"slow": WorkerState(speed=2.0, latency=0.5, labels=UNIFORM),
               "mid": WorkerState(speed=4.0, latency=0.5, labels=UNIFORM),
               "fast": WorkerState(speed=8.0, latency=0.5, labels=UNIFORM)}
    plan = regulate(workers, UNIFORM, target_batch=24, compiled_sizes=SIZES, slack=0.0)
    assert plan.batch_sizes == {"slow": 4, "mid": 8, "fast": 16}      # in proportion to speed
    assert plan.step_seconds == pytest.approx(2.5) and plan.idle_seconds == pytest.approx(0.0)
    equal = plan_of({"slow": 8, "mid": 8, "fast": 8}, workers, UNIFORM)   # the same batch, unregulated
    assert plan.merged_batch >= equal.merged_batch    # a batch at least as large, in 2.5 s instead of 4.5
    assert equal.step_seconds == pytest.approx(4.5) and equal.idle_seconds == pytest.approx(2.0 + 3.0)


def test_within_the_time_slack_the_sizes_bring_the_merged_labels_close_to_the_fleets():
    # Two skewed workers of equal speed and one balanced: time alone gives each the same size;
    # the label mix asks for more from the worker holding the fleet's under-represented class.
    workers = {"sports": WorkerState(speed=8.0, latency=0.0, labels={"sport": 9, "tech": 1}),
               "sports2": WorkerState(speed=8.0, latency=0.0, labels={"sport": 1}),
               "tech": WorkerState(speed=8.0, latency=0.0, labels={"tech": 1})}
    fleet = {"sport": 1, "tech": 1}
    time_only = regulate(workers, fleet, target_batch=24, compiled_sizes=SIZES, slack=1.0, passes=0)
    joint = regulate(workers, fleet, target_batch=24, compiled_sizes=SIZES, slack=1.0)
    assert time_only.batch_sizes == {"sports": 8, "sports2": 8, "tech": 8}
    assert joint.divergence < time_only.divergence / 10
    assert joint.merged_batch >= 24 and joint.step_seconds <= 2 * time_only.step_seconds
    assert joint.label_mix["tech"] == pytest.approx(0.5, abs=0.05)
    # Without slack the step time is held, and the sizes that fit it cannot improve the mix.
    held = regulate(workers, fleet, target_batch=24, compiled_sizes=SIZES, slack=0.0)
    assert held.step_seconds == pytest.approx(time_only.step_seconds) and held.merged_batch >= 24


def test_a_worker_too_slow_for_the_step_sits_it_out():
    workers = {"fast1": WorkerState(8.0, 0.0, UNIFORM), "fast2": WorkerState(8.0, 0.0, UNIFORM),
               "crawl": WorkerState(0.1, 5.0, UNIFORM)}
    plan = regulate(workers, UNIFORM, target_batch=16, compiled_sizes=SIZES, slack=0.2)
    assert plan.batch_sizes["crawl"] == 0 and plan.merged_batch >= 16 and plan.step_seconds <= 1.2
    assert worker_seconds(workers["crawl"], 0) == 0.0


def test_impossible_or_malformed_requests_are_refused():
    workers = {"w": WorkerState(1.0, 0.0, UNIFORM)}
    with pytest.raises(ValueError, match="below the target 64"):
        regulate(workers, UNIFORM, target_batch=64, compiled_sizes=SIZES)
    for bad in ({"w": WorkerState(0.0, 0.0, UNIFORM)}, {"w": WorkerState(math.nan, 0.0, UNIFORM)}):
        with pytest.raises(ValueError, match="speed must be > 0"):
            regulate(bad, UNIFORM, target_batch=2, compiled_sizes=SIZES)
    with pytest.raises(ValueError, match="compiled batch sizes"):
        regulate(workers, UNIFORM, target_batch=2, compiled_sizes=(0, 2))
