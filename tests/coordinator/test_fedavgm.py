"""FedAvgM (server momentum): by hand, as a recursion with an explicit buffer, and over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.strategies import ClientUpdate, get_strategy
from coordinator.strategies.fedavgm import FedAvgM
from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    CAPABILITIES, FakeTrainer, artifact_cache, backend, cleanup_jobs, fedavg_by_hand, manifest_of,
    meta, register, server, start_adapter, upload)

KEY = "layers.0.q_proj.lora_A.weight"


def _update(value, examples=1):
    return ClientUpdate(tensors={KEY: np.array(value, dtype=np.float32)}, num_examples=examples)


def test_first_round_is_fedavg_and_later_rounds_add_beta_times_the_last_step():
    strategy = get_strategy("fedavgm")
    x1 = {KEY: np.array([1.0, 2.0], dtype=np.float32)}
    updates = [_update([2.0, 2.0], 1), _update([1.0, 5.0], 3)]    # FedAvg: [1.25, 4.25]
    first = strategy.aggregate_train(x1, updates)
    np.testing.assert_allclose(first[KEY], [1.25, 4.25], rtol=0, atol=1e-7)
    # Round 2 starts at x2 = [3, 3] after x1 = [1, 2]: last step [2, 1]; FedAvg change [0.5, -1].
    x2 = {KEY: np.array([3.0, 3.0], dtype=np.float32)}
    second = strategy.aggregate_train(x2, [_update([3.5, 2.0])], previous=x1)
    beta = FedAvgM.beta
    np.testing.assert_allclose(second[KEY], [3 + beta * 2 + 0.5, 3 + beta * 1 - 1.0], rtol=0, atol=1e-6)
    assert second[KEY].dtype == np.float32


def test_recovered_momentum_equals_an_explicit_buffer_for_any_eta():
    class Slow(FedAvgM):            # not registered: only the formula is under test
        beta, eta = 0.8, 0.3

    rng = np.random.default_rng(0)
    strategy, x, m, history = Slow(), np.zeros(6), np.zeros(6), []
    for _ in range(5):
        targets = [x + rng.standard_normal(6) for _ in range(3)]
        counts = [4, 8, 12]
        change = sum(c * (t - x) for c, t in zip(counts, targets)) / sum(counts)
        m = 0.8 * m + change
        expected = x + 0.3 * m
        got = strategy.aggregate_train({KEY: x.astype(np.float32)},
                                       [_update(t, c) for t, c in zip(targets, counts)],
                                       previous=None if not history else {KEY: history[-1].astype(np.float32)})
        np.testing.assert_allclose(got[KEY], expected, rtol=0, atol=1e-5)
        history.append(x)
        x = got[KEY].astype(np.float64)


def test_a_round_without_updates_coasts_on_the_momentum_and_a_layout_change_is_refused():
    strategy = get_strategy("fedavgm")
    now, before = {KEY: np.array([2.0], dtype=np.float32)}, {KEY: np.array([1.0], dtype=np.float32)}
    np.testing.assert_allclose(strategy.aggregate_train(now, [], previous=before)[KEY], [2.0 + FedAvgM.beta])
    with pytest.raises(ValueError, match="layout"):
        strategy.aggregate_train(now, [], previous={"other": np.zeros(1, dtype=np.float32)})
    with pytest.raises(ValueError, match="shape"):
        strategy.aggregate_train(now, [], previous={KEY: np.zeros(2, dtype=np.float32)})


def test_served_job_applies_momentum_from_its_stored_adapters(server, cleanup_jobs):
    """Three rounds through the coordinator: round 1 is FedAvg, rounds 2 and 3 add beta times the
    previous global step, read back from the adapters the coordinator stored."""
    admin = server.admin()
    devices = [register(server, name=f"momentum-{i}")[1] for i in range(2)]
    job = admin.running_job(rounds=3, devices_per_round=2, min_updates=2, round_deadline_s=300, strategy="fedavgm")
    cleanup_jobs.append(job["job_id"])
    served = {0: start_adapter(admin, job["job_id"], 0)}
    for round_number in (1, 2, 3):
        tasks = [device.get("/api/v1/tasks/next").json() for device in devices]
        trainer = FakeTrainer(manifest_of(devices[0], tasks[0]))
        start, sent = served[round_number - 1], []
        for i, (device, task) in enumerate(zip(devices, tasks)):
            tensors = trainer.update(start, seed=10 * round_number + i, scale=0.05)
            assert upload(device, task, tensors, meta(num_examples=8 * (i + 1))).status_code == 201
            sent.append((8 * (i + 1), tensors))
        averaged = fedavg_by_hand(sent)
        served[round_number] = start_adapter(admin, job["job_id"], round_number)
        for key, value in averaged.items():
            expected = value.astype(np.float64)
            if round_number > 1:
                expected += FedAvgM.beta * (start[key].astype(np.float64) - served[round_number - 2][key])
            np.testing.assert_allclose(served[round_number][key], expected, rtol=0, atol=2e-6)
    assert admin.job(job["job_id"])["round_history"][2]["adapter"]["strategy"] == "fedavgm"
