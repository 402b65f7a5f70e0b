"""Differentially private jobs over real HTTP, on SQLite and PostgreSQL: who gets a task, what the
device is told, what is refused (and changes nothing), the noise the coordinator adds, the epsilon
it reports per round, and a job that stops when its budget is spent.

Updates come from the harness's FakeTrainer (a fake of the device's training: valid tensors of the
manifest's shapes); the device-side clipping of a real device is tests/fleet/test_device_privacy.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    CAPABILITIES, JOB_TIER, FakeTrainer, artifact_cache, assert_error, backend, cleanup_jobs, count_rows,
    manifest_of, meta, register, server, start_adapter, upload)

DP_CAPABILITIES = {**CAPABILITIES, "privacy": ["clip", "local_noise"]}


def _snapshot(server):
    return count_rows(server.database), server.blob_files(), server.staging_files()


def _task_of(device, job_id: int) -> dict:
    answer = device.get("/api/v1/tasks/next")
    assert answer.status_code == 200, (answer.status_code, answer.headers, answer.text)
    task = answer.json()
    assert task["job_id"] == job_id, task
    return task


def _change(tensors, start) -> np.ndarray:
    return np.concatenate([(tensors[k].astype(np.float64) - start[k]).ravel() for k in sorted(start)])


def _clipped(trainer, start, seed: int, norm: float) -> dict:
    """A FakeTrainer update whose change is scaled to L2 norm ``norm``."""
    raw = trainer.update(start, seed=seed)
    length = float(np.linalg.norm(_change(raw, start)))
    return {k: (start[k] + (raw[k].astype(np.float64) - start[k]) * norm / length).astype(np.float32) for k in start}


def test_a_central_dp_round_clips_adds_calibrated_noise_and_reports_epsilon(server, cleanup_jobs):
    from coordinator.api.tasks import NO_TASK_HEADER
    from coordinator.privacy.accountant import epsilon_after
    from coordinator.privacy.settings import PrivacySettings

    admin = server.admin()
    clip, noise = 0.05, 0.8
    privacy = {"mode": "central", "clip_norm": clip, "noise_multiplier": noise, "delta": 1e-5}
    job = admin.running_job(rounds=2, devices_per_round=2, min_updates=2, privacy=privacy)
    cleanup_jobs.append(job["job_id"])
    assert job["privacy"]["epsilon_spent"] == 0.0 and job["privacy"]["released_rounds"] == 0

    # A device that cannot clip is not offered the job, and is told why.
    _, plain_phone = register(server, name="no-privacy")
    answer = plain_phone.get("/api/v1/tasks/next")
    if answer.status_code == 200:
        assert answer.json()["job_id"] != job["job_id"]
    else:
        assert answer.status_code == 204 and "capabilities.privacy" in answer.headers[NO_TASK_HEADER]
    devices = [register(server, name=f"dp-{i}", capabilities=DP_CAPABILITIES)[1] for i in range(2)]
    tasks = [_task_of(d, job["job_id"]) for d in devices]
    assert tasks[0]["train"]["privacy"] == {"clip_norm": clip, "noise_multiplier": 0.0}

    start = start_adapter(admin, job["job_id"], 0)
    trainer = FakeTrainer(manifest_of(devices[0], tasks[0]))
    # An update longer than the clip norm is refused (the device did not clip) and changes nothing.
    before = _snapshot(server)
    refused = upload(devices[0], tasks[0], _clipped(trainer, start, 1, 3 * clip), meta())
    assert "at most" in assert_error(refused, 422, "norm_exceeded")["error"]["message"]
    assert _snapshot(server) == before

    updates = [_clipped(trainer, start, 10 + i, clip * 0.99) for i in range(2)]
    for device, task, tensors in zip(devices, tasks, updates):
        # Claimed example counts do not weight a DP mean: very different claims, same weight.
        assert upload(device, task, tensors, meta(num_examples=1 if device is devices[0] else 40)).status_code == 201
    done = admin.wait_job(job["job_id"], lambda j: j["round_history"][0]["status"] == "closed", what="closed round 1")
    served = start_adapter(admin, job["job_id"], 1)
    # new = start + (sum of changes + N(0, (z C)^2)) / devices_per_round: the residual is the noise.
    residual = _change(served, start) - (_change(updates[0], start) + _change(updates[1], start)) / 2
    expected_std = noise * clip / 2
    assert np.std(residual) == pytest.approx(expected_std, rel=0.15), (np.std(residual), residual.size)
    assert abs(np.mean(residual)) < 4 * expected_std / np.sqrt(residual.size)

    settings = PrivacySettings(mode="central", clip_norm=clip, noise_multiplier=noise)
    adapter = done["round_history"][0]["adapter"]
    assert adapter["strategy"] == "dp-fedavg (central)"
    assert adapter["epsilon"] == pytest.approx(epsilon_after(1, settings))
    assert done["privacy"]["epsilon_spent"] == pytest.approx(epsilon_after(1, settings))
    assert done["privacy"]["released_rounds"] == 1 and done["privacy"]["budget_exhausted"] is False

    # The dashboard states the settings and the epsilon spent per round.
    page = requests.get(f"{server.base_url}/jobs/{job['job_id']}", timeout=60)
    assert page.status_code == 200 and 'id="job-privacy"' in page.text and "central noise" in page.text
    assert "ε spent" in page.text and page.text.count('class="num epsilon"') == 2   # round 1 closed, round 2 open


def test_a_job_completes_when_one_more_round_would_spend_past_its_budget(server, cleanup_jobs):
    from coordinator.privacy.accountant import epsilon_after, rounds_within
    from coordinator.privacy.settings import PrivacySettings

    admin = server.admin()
    settings = PrivacySettings(mode="local", clip_norm=0.05, noise_multiplier=1.0, epsilon_budget=8.0)
    affordable = rounds_within(settings, 100)
    assert affordable == 2, affordable      # the budget was chosen for two rounds
    job = admin.running_job(rounds=6, devices_per_round=1, min_updates=1, privacy=settings.to_dict())
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, name="local-dp", capabilities=DP_CAPABILITIES)
    for round_number in (1, 2):
        task = _task_of(device, job["job_id"])
        assert task["train"]["privacy"] == {"clip_norm": 0.05, "noise_multiplier": 1.0}
        start = start_adapter(admin, job["job_id"], round_number - 1)
        trainer = FakeTrainer(manifest_of(device, task))
        # Local DP: the upload carries the device's own noise, far longer than the clip norm.
        clipped = _clipped(trainer, start, round_number, 0.04)
        rng = np.random.default_rng(round_number)
        noised = {k: (v + rng.normal(0, 1.0 * 0.05, v.shape)).astype(np.float32) for k, v in clipped.items()}
        assert np.linalg.norm(_change(noised, start)) > 0.05
        assert upload(device, task, noised, meta()).status_code == 201
        admin.wait_job(job["job_id"], lambda j: j["round_history"][round_number - 1]["status"] == "closed",
                       what=f"closed round {round_number}")
    done = admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed on its budget")
    assert [r["round"] for r in done["round_history"]] == [1, 2]
    assert [r["adapter"]["epsilon"] for r in done["round_history"]] == pytest.approx(
        [epsilon_after(1, settings), epsilon_after(2, settings)])
    assert done["privacy"]["budget_exhausted"] is True and done["privacy"]["epsilon_spent"] <= 8.0


def test_privacy_settings_that_cannot_hold_are_a_422_and_create_nothing(server):
    admin = server.admin()
    before = _snapshot(server)
    body = {"model": "tiny", "task": "bbcnews", "rounds": 1, "tier": dict(JOB_TIER), "eval_examples": 0}
    for privacy, strategy in (({"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0}, "hetlora"),
                              ({"mode": "central", "clip_norm": -1.0, "noise_multiplier": 1.0}, "fedavg"),
                              ({"mode": "central", "clip_norm": 1.0}, "fedavg"),
                              ({"mode": "central", "clip_norm": 1.0, "noise_multiplier": 0.3,
                                "epsilon_budget": 0.5}, "fedavg"),
                              ({"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0, "nonce": 1}, "fedavg"),
                              ("on", "fedavg")):
        response = admin.post("/api/v1/jobs", json={**body, "strategy": strategy, "privacy": privacy})
        assert "privacy" in assert_error(response, 422, "invalid_field")["error"]["message"]
    assert _snapshot(server) == before
