"""Fleet parts that need no coordinator: FLOP accounting, profiles, data slices."""

from __future__ import annotations

import pytest


def test_training_flops_by_hand_for_tiny(tiny_fp32_artifact):
    from fleet.hardware import training_flops

    _, _, manifest = tiny_fp32_artifact
    data = manifest.data if hasattr(manifest, "data") else manifest
    flops = training_flops(data)
    # tiny: hidden 64, 4 heads x 16, 2 KV heads, MLP 176, 4 layers, vocab 259; B=2, S=32;
    # LoRA r=4 on q_proj and v_proj of the last 2 layers.
    tokens = 2 * 32
    linear = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 176) * tokens
    attention = 2 * 2 * 32 * 64 * tokens
    lm_head = 2 * 64 * 259 * tokens
    lora = 2 * 4 * ((64 + 64) + (64 + 32)) * tokens * 2
    assert flops.forward == 4 * (linear + attention) + lm_head + lora
    assert flops.backward_activations == 2 * (linear + 2 * attention) + lm_head + lora
    assert flops.lora_weight_gradients == lora
    assert flops.total == flops.forward + flops.backward_activations + lora


def test_utilization_and_matmul_peak():
    from fleet.hardware import measure_matmul_gflops, utilization

    assert utilization(1e9, 10, 2.0, 10.0) == {"achieved_gflops": 5.0, "flop_utilization": 0.5}
    assert measure_matmul_gflops(size=64, min_seconds=0.05) > 0


def test_fleet_profiles_follow_shares_and_seed():
    from fleet.profiles import fleet_profiles

    fleet = fleet_profiles("mixed", 10, dropout=0.25, seed=4)
    names = [p.name for p in fleet]
    assert (names.count("flagship"), names.count("midrange"), names.count("budget")) == (3, 4, 3)
    assert names == [p.name for p in fleet_profiles("mixed", 10, dropout=0.25, seed=4)]
    assert all(p.dropout == 0.25 for p in fleet)
    budget = next(p for p in fleet if p.name == "budget")
    assert budget.transfer_seconds(1_000_000) == pytest.approx(budget.latency_s + 8.0)
    with pytest.raises(ValueError, match="unknown fleet"):
        fleet_profiles("galaxy", 3)


def test_round_examples_walk_the_shard_and_wrap():
    from fleet.data import parse_shard, round_examples

    shard = list(range(10))
    assert round_examples(shard, 1, 2, 3) == [0, 1, 2, 3, 4, 5]
    assert round_examples(shard, 2, 2, 3) == [6, 7, 8, 9, 0, 1]
    assert round_examples([7], 3, 1, 2) == [7, 7]
    assert parse_shard("3/10") == (2, 10)
    for bad in ("0/3", "4/3", "a/b", "3"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_a_shard_is_mixed_and_reproducible():
    """Corpora are listed by label; a device's first round must not see one topic only."""
    from fleet.data import LocalData
    from models.tasks import PartitionSpec

    shard = LocalData.from_task("bbcnews", 0, 10, PartitionSpec.parse("iid", seed=0)).examples
    assert len({e.label for e in shard[:16]}) >= 3
    again = LocalData.from_task("bbcnews", 0, 10, PartitionSpec.parse("iid", seed=0)).examples
    assert [e.example_id for e in shard] == [e.example_id for e in again]
