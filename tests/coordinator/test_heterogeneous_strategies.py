"""Aggregation over heterogeneous devices, by hand: FedAvg per covered element, HetLoRA-style
zero-padding and FlexLoRA, on small explicit adapters (reference rank R=2, out=3, in=2 unless a
test says otherwise)."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.strategies import ClientUpdate, TrainedPart, get_strategy, strategy_names
from coordinator.strategies.base import coverage_masks, module_prefixes

Q = "base_model.model.model.layers.28.self_attn.q_proj"
V = "base_model.model.model.layers.28.self_attn.v_proj"
ALL = ("fedavg", "zero_padding", "hetlora", "flexlora")


def module(a, b, prefix=Q) -> dict[str, np.ndarray]:
    """The two lifted tensors of one module, as float32."""
    return {f"{prefix}.lora_A.weight": np.asarray(a, dtype=np.float32),
            f"{prefix}.lora_B.weight": np.asarray(b, dtype=np.float32)}


def a_of(tensors, prefix=Q):
    return tensors[f"{prefix}.lora_A.weight"]


def b_of(tensors, prefix=Q):
    return tensors[f"{prefix}.lora_B.weight"]


def aggregate(name, current, updates):
    return get_strategy(name).aggregate_train(current, updates)


def full_of(value, a_shape=(2, 2), b_shape=(3, 2), prefix=Q):
    return module(np.full(a_shape, value), np.full(b_shape, value), prefix)


# --- the helpers in base -----------------------------------------------------------------------

def test_module_prefixes_and_coverage_masks():
    tensors = {**module(np.zeros((2, 2)), np.zeros((3, 2)), Q), **module(np.zeros((2, 2)), np.zeros((3, 2)), V)}
    assert module_prefixes(tensors) == [Q, V]
    assert module_prefixes({"A": 0, "B": 0}) == []

    part = TrainedPart(rank=1, rows=np.array([0, 2]), cols=np.array([1]))
    update = ClientUpdate(tensors, num_examples=1, trained={Q: part})
    a_mask, b_mask = coverage_masks(update, Q, (2, 2), (3, 2))
    np.testing.assert_array_equal(a_mask, [[False, True], [False, False]])
    np.testing.assert_array_equal(b_mask, [[True, False], [False, False], [True, False]])
    a_mask, b_mask = coverage_masks(update, Q, (2, 2), (3, 2), pad_rank=True)
    np.testing.assert_array_equal(a_mask, [[False, True], [False, True]])
    np.testing.assert_array_equal(b_mask, [[True, True], [False, False], [True, True]])
    # A module missing from `trained`: nothing covered; trained=None: everything.
    assert not any(mask.any() for mask in coverage_masks(update, V, (2, 2), (3, 2)))
    everything = ClientUpdate(tensors, num_examples=1)
    assert all(mask.all() for mask in coverage_masks(everything, V, (2, 2), (3, 2)))

    with pytest.raises(ValueError, match="exceeds the reference rank"):
        coverage_masks(ClientUpdate(tensors, 1, trained={Q: TrainedPart(rank=3)}), Q, (2, 2), (3, 2))
    with pytest.raises(ValueError, match="outside"):
        coverage_masks(ClientUpdate(tensors, 1, trained={Q: TrainedPart(2, rows=np.array([3]))}), Q, (2, 2), (3, 2))
    with pytest.raises(ValueError):
        TrainedPart(rank=-1)
    assert {"fedavg", "zero_padding", "hetlora", "flexlora"} <= set(strategy_names())


# --- FedAvg ------------------------------------------------------------------------------------

def test_fedavg_homogeneous_is_bit_identical_to_the_plain_weighted_mean():
    rng = np.random.default_rng(0)
    current = {**module(rng.normal(size=(2, 2)), rng.normal(size=(3, 2)), Q),
               **module(rng.normal(size=(2, 2)), rng.normal(size=(3, 2)), V)}
    counts = [1, 4, 1]  # shares that add up to 0.9999999999999999, so renormalising would show
    tensors = [{key: rng.normal(size=value.shape).astype(np.float32) for key, value in current.items()}
               for _ in counts]
    # A device that declares the whole adapter as trained is the homogeneous case too.
    updates = [ClientUpdate(tensors[0], counts[0]), ClientUpdate(tensors[1], counts[1]),
               ClientUpdate(tensors[2], counts[2], trained={Q: TrainedPart(2), V: TrainedPart(2)})]
    out = aggregate("fedavg", current, updates)
    weights = np.array(counts, dtype=np.float64) / sum(counts)
    for key in current:
        expected = np.zeros(current[key].shape)
        for weight, values in zip(weights, tensors):
            expected += weight * values[key].astype(np.float64)
        np.testing.assert_array_equal(out[key], expected.astype(np.float32))
        # The float32 rounding could hide a last-bit difference; the float64 mean shows it.
        everyone = [np.ones(current[key].shape, dtype=bool)] * len(counts)
        mean = get_strategy("fedavg").masked_mean(current[key], [t[key] for t in tensors], weights, everyone)
        np.testing.assert_array_equal(mean, expected)
    # Zero-padding has nothing to pad when everyone has everything: the same bits.
    padded = aggregate("zero_padding", current, updates)
    for key in current:
        np.testing.assert_array_equal(padded[key], out[key])


def test_fedavg_averages_each_element_over_the_updates_that_cover_it():
    current = full_of(9.0)
    rank_one = ClientUpdate(module([[1, 2], [0, 0]], [[1, 0], [2, 0], [0, 0]]), num_examples=1,
                            trained={Q: TrainedPart(rank=1, rows=np.array([0, 1]))})
    full = ClientUpdate(module([[5, 6], [7, 8]], [[3, 4], [5, 6], [7, 8]]), num_examples=3)
    absent = ClientUpdate(full_of(0.0), num_examples=4, trained={})  # lacks the layer: no vote
    out = aggregate("fedavg", current, [rank_one, full, absent])
    # A row 0: (1*[1, 2] + 3*[5, 6]) / 4; row 1 only the full device has.
    np.testing.assert_array_equal(a_of(out), np.array([[4.0, 5.0], [7.0, 8.0]], np.float32))
    # B column 0: rows 0 and 1 from both, row 2 (pruned by the first) from the full one; column 1 likewise.
    np.testing.assert_array_equal(b_of(out), np.array([[2.5, 4.0], [4.25, 6.0], [7.0, 8.0]], np.float32))


# --- zero-padding (HetLoRA) --------------------------------------------------------------------

def test_zero_padding_counts_missing_rank_components_as_zeros():
    current = full_of(9.0)
    rank_one = ClientUpdate(module([[1, 2], [0, 0]], [[1, 0], [2, 0], [3, 0]]), num_examples=1,
                            trained={Q: TrainedPart(rank=1)})
    rank_two = ClientUpdate(module([[5, 6], [7, 8]], [[3, 4], [5, 6], [7, 8]]), num_examples=3,
                            trained={Q: TrainedPart(rank=2)})
    absent = ClientUpdate(full_of(0.0), num_examples=4, trained={})  # lacks the layer: no vote
    out = aggregate("zero_padding", current, [rank_one, rank_two, absent])
    # Weights 1/4 and 3/4 (the absent device does not count); component 1 of the rank-1 device is 0:
    #   A row 0 = (1*[1, 2] + 3*[5, 6]) / 4 = [4, 5];  A row 1 = (1*[0, 0] + 3*[7, 8]) / 4 = [5.25, 6]
    #   B col 0 = (1*[1, 2, 3] + 3*[3, 5, 7]) / 4 = [2.5, 4.25, 6];  B col 1 = 3*[4, 6, 8] / 4 = [3, 4.5, 6]
    np.testing.assert_array_equal(a_of(out), np.array([[4.0, 5.0], [5.25, 6.0]], np.float32))
    np.testing.assert_array_equal(b_of(out), np.array([[2.5, 3.0], [4.25, 4.5], [6.0, 6.0]], np.float32))
    # FedAvg leaves component 1 to the rank-2 device alone: that is the difference.
    fedavg = aggregate("fedavg", current, [rank_one, rank_two, absent])
    np.testing.assert_array_equal(a_of(fedavg)[1], np.array([7.0, 8.0], np.float32))


def test_zero_padding_does_not_count_pruned_channels_as_zeros():
    current = full_of(9.0)
    # Kept only output row 0 (of B) and input column 1 (of A); everything else of it is lifted zeros.
    pruned = ClientUpdate(module([[0, 1], [0, 1]], [[1, 1], [0, 0], [0, 0]]), num_examples=1,
                          trained={Q: TrainedPart(rank=2, rows=np.array([0]), cols=np.array([1]))})
    full = ClientUpdate(module([[3, 3], [3, 3]], [[3, 3], [4, 4], [6, 6]]), num_examples=1)
    out = aggregate("zero_padding", current, [pruned, full])
    # Column 0 of A and rows 1, 2 of B come from the full device alone (not halved toward zero).
    np.testing.assert_array_equal(a_of(out), np.array([[3.0, 2.0], [3.0, 2.0]], np.float32))
    np.testing.assert_array_equal(b_of(out), np.array([[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]], np.float32))


# --- HetLoRA (zero-padding, devices weighted by ||B_k A_k||_F) --------------------------------------

def test_hetlora_weights_each_module_by_the_norm_of_each_devices_product():
    current = {**full_of(9.0, prefix=Q), **full_of(9.0, prefix=V)}
    # Device 1, rank 1: B A = [[1], [0], [0]] @ [[3, 4]] has norm 5 in Q; in V it is 3 * 4 = 12 (norm 12).
    small = ClientUpdate({**module([[3, 4], [0, 0]], [[1, 0], [0, 0], [0, 0]], Q),
                          **module([[0, 4], [0, 0]], [[3, 0], [0, 0], [0, 0]], V)},
                         num_examples=100, trained={Q: TrainedPart(rank=1), V: TrainedPart(rank=1)})
    # Device 2, rank 2: Q's product [[3, 0], [0, 4], [0, 0]] @ I has norm 5; V's is all zero.
    large = ClientUpdate({**module([[1, 0], [0, 1]], [[3, 0], [0, 4], [0, 0]], Q),
                          **module([[1, 0], [0, 1]], [[0, 0], [0, 0], [0, 0]], V)},
                         num_examples=1, trained={Q: TrainedPart(rank=2), V: TrainedPart(rank=2)})
    out = aggregate("hetlora", current, [small, large])
    # Q: norms 5 and 5, so 1/2 each whatever the example counts (100 against 1); padded like zero-padding.
    np.testing.assert_array_equal(a_of(out, Q), np.array([[2.0, 2.0], [0.0, 0.5]], np.float32))
    np.testing.assert_array_equal(b_of(out, Q), np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], np.float32))
    # V: the rank-2 device's product is zero, so the rank-1 device takes the whole weight.
    np.testing.assert_array_equal(a_of(out, V), np.array([[0.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_array_equal(b_of(out, V), np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]], np.float32))
    weights = get_strategy("hetlora").module_weights(current, [small, large])
    np.testing.assert_allclose(weights[Q], [0.5, 0.5])
    np.testing.assert_allclose(weights[V], [1.0, 0.0])


def test_hetlora_falls_back_to_example_shares_when_every_product_is_zero_and_ignores_absent_devices():
    current = full_of(9.0)
    zero_b = [[0, 0], [0, 0], [0, 0]]
    one = ClientUpdate(module([[1, 1], [1, 1]], zero_b), num_examples=1)
    three = ClientUpdate(module([[5, 5], [5, 5]], zero_b), num_examples=3)
    out, fedavg = aggregate("hetlora", current, [one, three]), aggregate("fedavg", current, [one, three])
    for key in current:
        np.testing.assert_array_equal(out[key], fedavg[key])
    # A device lacking the module has no vote even with a huge (lifted, ignored) product.
    trained = ClientUpdate(module([[1, 0], [0, 1]], [[1, 0], [0, 1], [0, 0]]), num_examples=1)
    absent = ClientUpdate(full_of(50.0), num_examples=1, trained={})
    out = aggregate("hetlora", current, [trained, absent])
    np.testing.assert_array_equal(a_of(out), np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    with pytest.raises(ValueError, match="positive number of examples"):
        aggregate("hetlora", current, [ClientUpdate(full_of(1.0), num_examples=0)])


@pytest.mark.parametrize("name", ALL)
def test_a_module_nobody_trained_keeps_current_exactly(name):
    rng = np.random.default_rng(1)
    current = {**module(rng.normal(size=(2, 2)), rng.normal(size=(3, 2)), Q),
               **module(rng.normal(size=(2, 2)), rng.normal(size=(3, 2)), V)}
    # Both devices trained only Q; their lifted V is zeros, which must not be taken as a vote.
    updates = [ClientUpdate({**module([[1, 2], [3, 4]], [[1, 0], [0, 1], [1, 1]], Q),
                             **full_of(0.0, prefix=V)}, num_examples=n, trained={Q: TrainedPart(rank=2)})
               for n in (1, 2)]
    out = aggregate(name, current, updates)
    np.testing.assert_array_equal(a_of(out, V), current[f"{V}.lora_A.weight"])
    np.testing.assert_array_equal(b_of(out, V), current[f"{V}.lora_B.weight"])
    # ...while Q did change.
    assert not np.array_equal(a_of(out, Q), current[f"{Q}.lora_A.weight"])


# --- FlexLoRA ----------------------------------------------------------------------------------

def rank_one_device(b_column, a_row, num_examples, rank=2):
    """A device that trained rank 1 of a rank-``rank`` reference: its factors lifted with zeros."""
    a = np.zeros((rank, len(a_row)))
    b = np.zeros((len(b_column), rank))
    a[0], b[:, 0] = a_row, b_column
    return ClientUpdate(module(a, b), num_examples=num_examples, trained={Q: TrainedPart(rank=1)})


def test_flexlora_averages_products_exactly_when_the_rank_allows():
    current = full_of(0.5)
    # Products [[2, 0], [0, 0], [0, 0]] and [[0, 0], [0, 4], [0, 0]]: the mean diag(1, 2) has rank 2.
    updates = [rank_one_device([1, 0, 0], [2, 0], 1), rank_one_device([0, 1, 0], [0, 4], 1)]
    out = aggregate("flexlora", current, updates)
    mean = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(b_of(out) @ a_of(out), mean, atol=1e-6)
    # Singular values 2 and 1, split evenly: |B[:, k]|^2 = |A[k]|^2 = s_k, in decreasing order.
    np.testing.assert_allclose((b_of(out) ** 2).sum(axis=0), [2.0, 1.0], atol=1e-6)
    np.testing.assert_allclose((a_of(out) ** 2).sum(axis=1), [2.0, 1.0], atol=1e-6)
    # The first component alone is the best rank-1 approximation (what a rank-1 device slices).
    np.testing.assert_allclose(b_of(out)[:, :1] @ a_of(out)[:1], [[0, 0], [0, 2], [0, 0]], atol=1e-6)
    # Averaging the factors separately (FedAvg) does not give the mean of the products here.
    fedavg = aggregate("fedavg", current, updates)
    assert np.abs(b_of(fedavg) @ a_of(fedavg) - mean).max() > 0.4


def test_flexlora_with_rank_one_keeps_the_best_rank_one_approximation():
    # Mean product = U diag(3, 1) with orthonormal columns u1 = (0.6, 0.8, 0), u2 = (0.8, -0.6, 0):
    # [[1.8, 0.8], [2.4, -0.6], [0, 0]], built from one rank-1 device per singular direction.
    current = module([[0.5, 0.5]], [[0.5], [0.5], [0.5]])
    updates = [rank_one_device([3.6, 4.8, 0.0], [1.0, 0.0], 1, rank=1),
               rank_one_device([1.6, -1.2, 0.0], [0.0, 1.0], 1, rank=1)]
    out = aggregate("flexlora", current, updates)
    assert a_of(out).shape == (1, 2) and b_of(out).shape == (3, 1)
    np.testing.assert_allclose(b_of(out) @ a_of(out), [[1.8, 0.0], [2.4, 0.0], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose((b_of(out) ** 2).sum(), 3.0, atol=1e-6)


def test_flexlora_weights_products_by_examples():
    current = full_of(0.5)
    updates = [rank_one_device([1, 0, 0], [2, 0], 1), rank_one_device([0, 1, 0], [0, 4], 3)]
    out = aggregate("flexlora", current, updates)
    # (1 * [[2, 0], [0, 0], [0, 0]] + 3 * [[0, 0], [0, 4], [0, 0]]) / 4
    np.testing.assert_allclose(b_of(out) @ a_of(out), [[0.5, 0.0], [0.0, 3.0], [0.0, 0.0]], atol=1e-6)


def test_flexlora_averages_each_product_element_over_the_devices_that_have_its_channels():
    current = module([[1, 0], [0, 1]], [[1, 1], [1, 1], [1, 1]])  # B0 @ A0 = all ones
    # Device 1 kept output rows 0 and 1 only; device 2 input column 0 only; nobody has (2, 1).
    first = ClientUpdate(module([[2, 2], [0, 0]], [[1, 0], [2, 0], [0, 0]]), num_examples=1,
                         trained={Q: TrainedPart(rank=1, rows=np.array([0, 1]))})
    second = ClientUpdate(module([[4, 0], [0, 0]], [[1, 0], [1, 0], [1, 0]]), num_examples=1,
                          trained={Q: TrainedPart(rank=1, cols=np.array([0]))})
    out = aggregate("flexlora", current, [first, second])
    # Products [[2, 2], [4, 4], [0, 0]] and [[4, 0], [4, 0], [4, 0]]:
    #   (0, 0), (1, 0): both -> 3, 4;  (0, 1), (1, 1): first only -> 2, 4;  (2, 0): second -> 4;
    #   (2, 1): nobody -> current's 1.  The result [[3, 2], [4, 4], [4, 1]] has rank 2 = R.
    np.testing.assert_allclose(b_of(out) @ a_of(out), [[3, 2], [4, 4], [4, 1]], atol=1e-5)


def test_flexlora_keeps_an_untrained_module_as_it_is_without_refactoring():
    rng = np.random.default_rng(2)
    trained_q = module([[1, 0], [0, 1]], [[1, 0], [0, 1], [0, 0]], Q)
    current = {**trained_q, **module(rng.normal(size=(2, 2)), rng.normal(size=(3, 2)), V),
               **module(rng.normal(size=(2, 2)), np.zeros((3, 2)), "fresh")}
    update = ClientUpdate({**trained_q, **full_of(0.0, prefix=V), **full_of(0.0, prefix="fresh")},
                          num_examples=1, trained={Q: TrainedPart(rank=2)})
    out = aggregate("flexlora", current, [update])
    for key in (f"{V}.lora_A.weight", f"{V}.lora_B.weight", "fresh.lora_A.weight", "fresh.lora_B.weight"):
        np.testing.assert_array_equal(out[key], current[key])  # a refactoring would change the factors
    assert np.abs(out["fresh.lora_A.weight"]).min() > 0  # a fresh module's A is not wiped out


def test_flexlora_negligible_components_keep_currents_a_rows_and_zero_b_columns():
    current = module([[7, 8], [9, 10]], [[1, 1], [1, 1], [1, 1]])
    # Both products are multiples of [[1, 2], [2, 4], [0, 0]]: the mean has rank 1, s_1 = 0.
    updates = [rank_one_device([1, 2, 0], [1, 2], 1), rank_one_device([2, 4, 0], [2, 4], 1)]
    out = aggregate("flexlora", current, updates)
    np.testing.assert_allclose(b_of(out) @ a_of(out), 2.5 * np.array([[1, 2], [2, 4], [0, 0]]), atol=1e-5)
    np.testing.assert_array_equal(b_of(out)[:, 1], np.zeros(3, np.float32))
    np.testing.assert_array_equal(a_of(out)[1], np.array([9.0, 10.0], np.float32))
    assert np.abs(b_of(out)[:, 0]).max() > 0

    # Every product zero (the devices' B stayed zero): B all zero, A exactly current's.
    zero = [ClientUpdate(module([[1, 1], [1, 1]], np.zeros((3, 2))), num_examples=1)]
    out = aggregate("flexlora", current, zero)
    np.testing.assert_array_equal(b_of(out), np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(a_of(out), np.array([[7, 8], [9, 10]], np.float32))

    # A reference rank above min(out, in) = 2: the third component has no singular value at all.
    current = module([[1, 0], [0, 1], [5, 6]], np.ones((3, 3)))
    out = aggregate("flexlora", current, [ClientUpdate(module([[1, 0], [0, 1], [0, 0]], np.eye(3)), 1)])
    np.testing.assert_allclose(b_of(out) @ a_of(out), np.eye(3)[:, :2], atol=1e-6)
    np.testing.assert_array_equal(a_of(out)[2], np.array([5.0, 6.0], np.float32))
    np.testing.assert_array_equal(b_of(out)[:, 2], np.zeros(3, np.float32))


# --- every strategy ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_every_reference_key_comes_back_float32_with_its_shape(name):
    current = {**module(np.ones((2, 2), np.float64), np.ones((3, 2), np.float64), Q),
               **module(np.ones((4, 5)), np.ones((6, 4)), V)}
    updates = [ClientUpdate({key: np.full(value.shape, 2.0, np.float32) for key, value in current.items()},
                            num_examples=2, trained={Q: TrainedPart(rank=1, rows=np.array([1]))}),
               ClientUpdate({key: np.full(value.shape, 3.0, np.float32) for key, value in current.items()},
                            num_examples=1)]
    for round_updates in (updates, []):
        out = aggregate(name, current, round_updates)
        assert list(out) == list(current)
        for key, value in current.items():
            assert out[key].dtype == np.float32 and out[key].shape == value.shape, key


def test_hetlora_asks_devices_to_prune_their_own_rank_and_the_other_strategies_do_not():
    from models.rank_pruning import RankSelfPruning

    train = {"steps": 8, "lr": 0.1}
    asked = get_strategy("hetlora").configure_train(3, train)
    assert RankSelfPruning.from_train(asked) == get_strategy("hetlora").self_pruning
    assert train == {"steps": 8, "lr": 0.1}                     # the caller's dict is left alone
    for name in ("fedavg", "zero_padding", "flexlora"):
        assert "rank_self_pruning" not in get_strategy(name).configure_train(3, train)
