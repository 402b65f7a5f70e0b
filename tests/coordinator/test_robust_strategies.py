"""Robust aggregation (coordinate-wise trimmed mean and median) against poisoned updates, by hand.

A fifth of the devices send scaled or sign-flipped updates: FedAvg follows them, the robust
strategies stay within the honest values. Claimed example counts move nothing, and
heterogeneous coverage (a device of lower rank) is respected as in FedAvg.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.strategies import ClientUpdate, TrainedPart, get_strategy, strategy_names

Q = "base_model.model.model.layers.28.self_attn.q_proj"
A, B = f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"


def tensors(value, a_shape=(2, 3), b_shape=(4, 2)) -> dict[str, np.ndarray]:
    return {A: np.full(a_shape, value, dtype=np.float32), B: np.full(b_shape, value, dtype=np.float32)}


def honest_and_poisoned(poison: float, examples_claimed: int = 10) -> list[ClientUpdate]:
    """Eight honest updates (values 1.00 .. 1.07) and two poisoned ones (a fifth)."""
    honest = [ClientUpdate(tensors(1.0 + 0.01 * i), num_examples=10) for i in range(8)]
    return honest + [ClientUpdate(tensors(poison), num_examples=examples_claimed) for _ in range(2)]


def test_both_are_registered():
    assert {"trimmed_mean", "median"} <= set(strategy_names())


@pytest.mark.parametrize("poison", [100.0, -1.0, -100.0])
def test_a_fifth_of_poisoned_devices_cannot_move_the_robust_aggregate_outside_the_honest_range(poison):
    start = tensors(0.0)
    updates = honest_and_poisoned(poison)
    fedavg = get_strategy("fedavg").aggregate_train(start, updates)
    for name in ("trimmed_mean", "median"):
        result = get_strategy(name).aggregate_train(start, updates)
        for key in (A, B):
            assert 1.0 - 1e-6 <= result[key].min() and result[key].max() <= 1.07 + 1e-6, (name, poison, result[key])
            assert result[key].dtype == np.float32 and result[key].shape == start[key].shape
    assert abs(float(fedavg[A].mean()) - 1.035) > 0.05          # FedAvg is dragged away


def test_trimmed_mean_by_hand_and_claimed_counts_change_nothing():
    start = tensors(0.0)
    updates = honest_and_poisoned(100.0)
    # K = 10, beta 0.2: two values dropped at each end: the two lowest honest and the two poisoned.
    expected = np.mean([1.0 + 0.01 * i for i in range(2, 8)])
    result = get_strategy("trimmed_mean").aggregate_train(start, updates)
    assert np.allclose(result[A], expected, atol=1e-6)
    inflated = get_strategy("trimmed_mean").aggregate_train(start, honest_and_poisoned(100.0, examples_claimed=10**9))
    assert np.array_equal(inflated[A], result[A])
    median = get_strategy("median").aggregate_train(start, honest_and_poisoned(100.0, examples_claimed=10**9))
    assert np.allclose(median[A], np.median([1.0 + 0.01 * i for i in range(8)] + [100.0, 100.0]), atol=1e-6)


def test_few_updates_are_their_plain_mean_and_none_keep_the_start():
    start = tensors(0.5)
    updates = [ClientUpdate(tensors(v), num_examples=1) for v in (1.0, 2.0, 3.0)]
    assert np.allclose(get_strategy("trimmed_mean").aggregate_train(start, updates)[A], 2.0)
    assert np.allclose(get_strategy("median").aggregate_train(start, updates)[A], 2.0)
    for name in ("trimmed_mean", "median"):
        assert np.array_equal(get_strategy(name).aggregate_train(start, [])[A], start[A])


def test_heterogeneous_ranks_vote_only_for_what_they_trained():
    """A rank-1 device covers A's first row and B's first column only; the second rank
    component is aggregated over the rank-2 devices alone."""
    start = tensors(0.0)
    full = [ClientUpdate(tensors(2.0), num_examples=1) for _ in range(3)]
    low = tensors(9.0)
    low[A][1:] = 0.0
    low[B][:, 1:] = 0.0
    partial = ClientUpdate(low, num_examples=1, trained={Q: TrainedPart(rank=1)})
    for name in ("trimmed_mean", "median"):
        result = get_strategy(name).aggregate_train(start, full + [partial])
        assert np.allclose(result[A][1], 2.0) and np.allclose(result[B][:, 1], 2.0)
        first = result[A][0]
        assert np.all((first >= 2.0) & (first <= 9.0))          # the rank-1 device voted here
