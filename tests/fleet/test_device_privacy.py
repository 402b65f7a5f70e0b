"""A real device (the tiny model on the ExecuTorch runtime) in differentially private jobs: what
leaves it is already clipped (central DP) or clipped and noised by the device itself (local DP).

The update the coordinator stores is byte for byte what the device sent (content-addressed
blobs), so its change from the round's start adapter is what left the device."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load as load_safetensors

from fleet_harness import private_server, seeded_artifact_cache, start_device

import pytest


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


def _stored_change(admin, job_id: int) -> tuple[np.ndarray, dict]:
    from coordinator_harness import start_adapter

    round_ = admin.get(f"/api/v1/jobs/{job_id}/rounds/1").json()
    [update] = [task["update"] for task in round_["tasks"] if task.get("update")]
    sent = load_safetensors(admin.get(f"/api/v1/blobs/{update['sha256']}").content)
    start = start_adapter(admin, job_id, 0)
    return np.concatenate([(sent[k].astype(np.float64) - start[k]).ravel() for k in sorted(start)]), update


def test_a_device_clips_its_update_and_under_local_dp_adds_its_own_noise(artifact_cache, tmp_path):
    from coordinator_harness import JOB_TIER

    clip = 1e-3     # far below what three tiny-model steps at lr 0.5 change: the device must clip
    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        for mode, noise in (("central", 0.7), ("local", 0.7)):
            job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1, local_steps=3, lr=0.5,
                                    tier=dict(JOB_TIER),
                                    privacy={"mode": mode, "clip_norm": clip, "noise_multiplier": noise})
            log = tmp_path / f"{mode}.log"
            device = start_device(server, tmp_path / f"device-{mode}", log, "--task", "bbcnews", "--shard", "1/4",
                                  "--max-tasks", "1", "--name", f"dp-{mode}")
            assert device.wait(180) == 0, log.read_text()
            done = admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed")
            change, update = _stored_change(admin, job["job_id"])
            if mode == "central":
                # clipped to C before it left (the device trained far further than C)
                assert 0.99 * clip <= np.linalg.norm(change) <= clip, np.linalg.norm(change)
                assert update["delta_norm"] <= clip
            else:
                # clipped change (norm <= C) plus the device's N(0, (z C)^2) on every value
                assert np.std(change) == pytest.approx(noise * clip, rel=0.1), np.std(change)
            assert done["round_history"][0]["adapter"]["strategy"] == f"dp-fedavg ({mode})"
            assert done["privacy"]["epsilon_spent"] > 0
    finally:
        server.stop()
