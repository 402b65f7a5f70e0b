"""A real device (the tiny model on the ExecuTorch runtime) in a job with a compressed encoding:
it sends its change as top-k, gzip-compressed, keeps what it did not send for its next task,
and the bytes it reports are the bytes the coordinator received."""

from __future__ import annotations

import pytest

from fleet_harness import private_server, seeded_artifact_cache, start_device


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


def test_a_device_sends_topk_changes_with_error_feedback(artifact_cache, tmp_path):
    from coordinator_harness import JOB_TIER

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        job = admin.running_job(rounds=2, devices_per_round=1, min_updates=1, local_steps=3, lr=0.5,
                                tier=dict(JOB_TIER), update_encoding={"name": "topk", "fraction": 0.25})
        log = tmp_path / "device.log"
        device = start_device(server, tmp_path / "device", log, "--task", "bbcnews", "--shard", "1/4",
                              "--max-tasks", "2", "--name", "topk")
        assert device.wait(240) == 0, log.read_text()
        admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed")
        fp32_bytes = None
        for round_number in (1, 2):
            round_ = admin.get(f"/api/v1/jobs/{job['job_id']}/rounds/{round_number}").json()
            [update] = [t["update"] for t in round_["tasks"] if t["update"]]
            assert update["wire_bytes"] == update["bytes_uploaded"]     # what it says it sent arrived
            fp32_bytes = update["size"]                                 # stored: the decoded fp32 tensors
            assert update["wire_bytes"] < 0.6 * fp32_bytes, (update["wire_bytes"], fp32_bytes)
        residual = tmp_path / "device" / "residuals" / f"job{job['job_id']}.safetensors"
        assert residual.is_file()       # what top-k left out waits for the next task
    finally:
        server.stop()
