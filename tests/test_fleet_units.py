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
    # A label-position head at K=3 positions per row: the LM head over 2 x 3 tokens only.
    head = training_flops({**data, "program": {**data["program"], "loss_positions": 3}})
    assert head.forward == flops.forward - lm_head + 2 * 64 * 259 * 2 * 3
    assert head.backward_activations == flops.backward_activations - lm_head + 2 * 64 * 259 * 2 * 3


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


def test_class_balanced_walk_takes_classes_in_turn_and_carries_on_across_rounds():
    from fleet.data import round_examples

    # 6 "sport" examples and 2 "tech" ones: a sequential walk is 3/4 sport, the balanced one half and half
    shard = [("s0", "sport"), ("t0", "tech"), ("s1", "sport"), ("s2", "sport"), ("s3", "sport"),
             ("t1", "tech"), ("s4", "sport"), ("s5", "sport")]
    label = lambda e: e[1]  # noqa: E731
    first = round_examples(shard, 1, 2, 3, "class_balanced", label)
    assert [e[0] for e in first] == ["s0", "t0", "s1", "t1", "s2", "t0"]
    second = round_examples(shard, 2, 2, 3, "class_balanced", label)
    assert [e[0] for e in second] == ["s3", "t1", "s4", "t0", "s5", "t1"]
    # every sport example is reached before any repeats, the 2 tech ones repeat
    assert sorted(e[0] for e in first + second if e[1] == "sport") == ["s0", "s1", "s2", "s3", "s4", "s5"]
    # one class: exactly the sequential walk
    text = [(f"p{i}", "text") for i in range(5)]
    for round_number in (1, 2, 3):
        assert (round_examples(text, round_number, 2, 2, "class_balanced", label)
                == round_examples(text, round_number, 2, 2))
    with pytest.raises(ValueError, match="unknown local sampling"):
        round_examples(shard, 1, 1, 1, "shuffled", label)
    with pytest.raises(ValueError, match="labelled"):
        round_examples([("x", None)], 1, 1, 1, "class_balanced", label)


def test_class_balanced_walk_evens_out_a_dirichlet_shard():
    from collections import Counter

    from fleet.data import LocalData, round_examples
    from models.tasks import PartitionSpec

    shard = LocalData.from_task("bbcnews", 3, 20, PartitionSpec.parse("dirichlet:0.5", seed=0)).examples
    held = Counter(e.label for e in shard)
    assert max(held.values()) >= 3 * min(held.values()), held   # the skew this is for
    walked = Counter(e.label for e in round_examples(shard, 1, 8 * len(held), 1, "class_balanced"))
    assert set(walked) == set(held) and set(walked.values()) == {8}


def test_a_shard_is_mixed_and_reproducible():
    """Corpora are listed by label; a device's first round must not see one topic only."""
    from fleet.data import LocalData
    from models.tasks import PartitionSpec

    shard = LocalData.from_task("bbcnews", 0, 10, PartitionSpec.parse("iid", seed=0)).examples
    assert len({e.label for e in shard[:16]}) >= 3
    again = LocalData.from_task("bbcnews", 0, 10, PartitionSpec.parse("iid", seed=0)).examples
    assert [e.example_id for e in shard] == [e.example_id for e in again]


# --- the virtual clock ---------------------------------------------------------------------------

def test_virtual_task_cost_by_hand(monkeypatch):
    """download: a round trip for the task request and one per fetched file, plus bytes over the
    link; compute: counted FLOPs over the profile's sustained rate; upload: one round trip."""
    from fleet import virtual_clock
    from fleet.profiles import DeviceProfile

    monkeypatch.setitem(virtual_clock.REFERENCE_SUSTAINED_GFLOPS, "executorch-portable-int8", 20.0)
    profile = DeviceProfile("slow", slowdown=4.0, bandwidth_mbps=8.0, latency_s=0.1).validate()
    assert profile.sustained_gflops("executorch-portable-int8") == 5.0
    cost = virtual_clock.task_cost(profile, "executorch-portable-int8", flops=33e9, bytes_down=2_000_000,
                                   files_fetched=4, bytes_up=50_000)
    assert cost.download_seconds == pytest.approx(5 * 2 * 0.1 + 2_000_000 * 8 / 8e6)     # 1.0 + 2.0
    assert cost.compute_seconds == pytest.approx(33e9 / 5e9)                             # 6.6
    assert cost.upload_seconds == pytest.approx(2 * 0.1 + 50_000 * 8 / 8e6)              # 0.2 + 0.05
    assert cost.total == pytest.approx(3.0 + 6.6 + 0.25)
    # Nothing uploaded (a dropout): no upload round trip.
    assert virtual_clock.task_cost(profile, "executorch-portable-int8", 0.0, 0, 0, 0).total == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no calibrated rate"):
        profile.sustained_gflops("tpu-bf16")


def test_every_program_kind_is_calibrated_and_profiles_scale_it():
    from fleet.profiles import PROFILES
    from fleet.virtual_clock import PROGRAM_KINDS, REFERENCE_PEAK_GFLOPS, REFERENCE_SUSTAINED_GFLOPS

    assert set(REFERENCE_SUSTAINED_GFLOPS) == set(PROGRAM_KINDS)
    assert all(0 < rate < REFERENCE_PEAK_GFLOPS for rate in REFERENCE_SUSTAINED_GFLOPS.values())
    budget, flagship = PROFILES["budget"], PROFILES["flagship"]
    for kind in PROGRAM_KINDS:
        assert flagship.sustained_gflops(kind) == REFERENCE_SUSTAINED_GFLOPS[kind]
        assert budget.sustained_gflops(kind) == pytest.approx(REFERENCE_SUSTAINED_GFLOPS[kind] / 10)
    assert budget.peak_gflops == pytest.approx(REFERENCE_PEAK_GFLOPS / 10)


def test_program_kind_follows_format_kernels_and_precision():
    from fleet.virtual_clock import program_kind

    def manifest(fmt, kernels, quantize):
        return {"format": fmt, "tier": {"kernels": kernels, "quantize": quantize}}

    assert program_kind(manifest("executorch", "xnnpack", "none")) == "executorch-xnnpack-fp32"
    assert program_kind(manifest("executorch", "portable", "int8")) == "executorch-portable-int8"
    # ONNX Runtime has no kernel choice: the tier's kernels field does not apply to it.
    assert program_kind(manifest("onnxruntime", "portable", "none")) == "onnxruntime-fp32"
    assert program_kind(manifest("onnxruntime", "xnnpack", "int8")) == "onnxruntime-int8"


def test_task_flops_count_steps_and_prefix_passes_by_hand(tiny_fp32_artifact):
    from fleet.hardware import prefix_flops_per_example, task_flops, training_flops

    _, _, manifest = tiny_fp32_artifact
    data = manifest.data if hasattr(manifest, "data") else manifest
    step = training_flops(data).total
    assert prefix_flops_per_example(data) == 0.0
    assert task_flops(data, steps=3) == 3 * step
    # The same tier with a prefix program: 2 frozen layers below the LoRA layers, one example of
    # seq 32 tokens through each (hidden 64, 4 heads x 16, 2 KV heads, MLP 176).
    with_prefix = {**data, "prefix": {"file": "prefix.pte"}}
    linear = 2 * (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 176) * 32
    attention = 2 * 2 * 32 * 64 * 32
    assert prefix_flops_per_example(with_prefix) == 2 * (linear + attention)
    assert task_flops(with_prefix, steps=3, prefix_examples=5) == (3 * training_flops(with_prefix).total
                                                                   + 5 * 2 * (linear + attention))


def test_dropouts_are_seeded_draws_of_device_and_round():
    from fleet.device import dropout_step

    keys = [(seed, round_number) for seed in range(300) for round_number in (1, 2, 3)]
    draws = {key: dropout_step(*key, steps=8, dropout=0.25) for key in keys}
    # The same in any order of asking (no shared generator whose state depends on earlier tasks).
    assert {key: dropout_step(*key, steps=8, dropout=0.25) for key in reversed(keys)} == draws
    dropped = [d for d in draws.values() if d is not None]
    assert 0.18 < len(dropped) / len(draws) < 0.32
    assert all(0 <= d < 8 for d in dropped) and len(set(dropped)) > 4
    assert all(dropout_step(seed, 1, 8, 0.0) is None for seed in range(50))
    assert [draws[(s, 1)] for s in range(300)] != [draws[(s, 2)] for s in range(300)]


def _trained(device, seconds, job_id=1, round_number=1, status="trained"):
    return {"device": device, "virtual_seconds": seconds, "job_id": job_id, "round": round_number, "status": status}


def test_round_membership_is_the_first_k_by_virtual_finish_not_host_order():
    from fleet.simulator import planned_membership

    # In host order the budget phone finished first (listed first); on the virtual clock it is last.
    results = [_trained("budget", 95.0), _trained("flagship-1", 2.0), _trained("midrange", 9.0),
               _trained("flagship-2", 3.0), _trained("gone", 1.0, status="dropped")]
    assert planned_membership(results, 3, 300.0) == (["flagship-1", "flagship-2", "midrange"], "min_updates")
    # With the virtual deadline before the third finisher: every result by the deadline, closed by it.
    assert planned_membership(results, 3, 5.0) == (["flagship-1", "flagship-2"], "deadline")
    # Ties are broken by name, never by arrival.
    tied = [_trained("b", 1.0), _trained("a", 1.0), _trained("c", 1.0)]
    assert planned_membership(tied, 2, 10.0)[0] == ["a", "b"]


def test_delivery_uploads_in_virtual_order_and_closes_the_round_at_the_virtual_deadline():
    """A stand-in for the coordinator's rule: freeze at min_updates accepted, refuse afterwards."""
    from fleet.simulator import deliver_in_virtual_order

    events, state = [], {"accepted": 0, "frozen": False}

    def upload(outcome):
        events.append(("upload", outcome["device"]))
        if state["frozen"]:
            return {**outcome, "status": "cut"}
        state["accepted"] += 1
        state["frozen"] = state["accepted"] >= 3
        return {**outcome, "status": "accepted"}

    def close_now(job_id, round_number):
        events.append(("close", job_id, round_number))
        state["frozen"] = True            # the admin close at the virtual deadline (no-op if frozen)

    results = [_trained("budget", 95.0), _trained("flagship-1", 2.0), _trained("midrange", 9.0),
               _trained("flagship-2", 3.0)]
    final = deliver_in_virtual_order(results, upload, 300.0, close_now)
    assert [(o["device"], o["status"]) for o in final] == [
        ("flagship-1", "accepted"), ("flagship-2", "accepted"), ("midrange", "accepted"), ("budget", "cut")]
    assert events[-1] == ("close", 1, 1)      # asked once at the end; the round had frozen by itself

    events.clear()
    state.update(accepted=0, frozen=False)
    final = deliver_in_virtual_order(results, upload, 5.0, close_now)
    # Two finish by the virtual deadline; the round is closed then, and the later two are cut.
    assert events == [("upload", "flagship-1"), ("upload", "flagship-2"), ("close", 1, 1), ("upload", "midrange"),
                      ("upload", "budget")]
    assert [o["status"] for o in final] == ["accepted", "accepted", "cut", "cut"]

    events.clear()
    state.update(accepted=0, frozen=False)
    final = deliver_in_virtual_order(results[1:3], upload, 300.0, close_now)
    # Fewer than min_updates, all in time: the round is closed after the last one, no real wait.
    assert events == [("upload", "flagship-1"), ("upload", "midrange"), ("close", 1, 1)]


def test_report_shows_an_evaluation_with_its_interval_when_there_is_one():
    from fleet.simulator import format_report, score_text

    assert score_text({"metric": "accuracy", "value": 0.842, "ci95": [0.801, 0.878]}) == "0.842 [0.801, 0.878]"
    assert score_text({"metric": "accuracy", "value": 0.842}) == "0.842"
    assert score_text({"metric": "perplexity", "value": 17.5, "ci95": None}) == "17.50"
    round_one = {"round": 1, "real_seconds": 3.0, "virtual_seconds": 9.5, "close_reason": "min_updates",
                 "accepted": 3, "cut": 1, "dropped": 0, "rejected": 0, "bytes_down": 1e6, "bytes_up": 1e4,
                 "mean_loss_before": 2.0, "mean_loss_after": 1.5, "mean_flop_utilization": 0.1,
                 "metric": "accuracy", "value": 0.6, "ci95": [0.5, 0.7]}
    table = format_report({"initial_evaluation": {"metric": "accuracy", "value": 0.2, "ci95": [0.1, 0.3]},
                           "rounds": [round_one]})
    assert "accuracy 0.200 [0.100, 0.300]" in table and "accuracy 0.600 [0.500, 0.700]" in table


def test_the_probe_batch_is_held_out_of_training_and_the_same_every_round():
    from fleet.device import probe_split

    examples = list(range(20))
    assert probe_split(examples, 4, False) == (examples, [])
    trainable, probe = probe_split(examples, 4, True)
    assert probe == [16, 17, 18, 19] and trainable == list(range(16))
    assert probe_split(examples, 4, True) == (trainable, probe)
    assert probe_split(list(range(11)), 4, True) == (list(range(11)), [])   # too small to spare a batch
