"""A mixed-runtime fleet over loopback: ExecuTorch and ONNX Runtime devices train one job.

Two of four devices declare only ``onnxruntime``. The coordinator exports the job's tier for
ONNX Runtime on demand, sends those devices that artifact and the start adapter as
safetensors, and aggregates every update, whichever runtime trained it, into one global
adapter: the test recomputes round 1's FedAvg from the stored updates and compares.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from fleet_harness import ENROLLMENT_KEY, private_server, seeded_artifact_cache


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


def _adapter_weights(zip_bytes: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        return archive.read("adapter_model.safetensors")


def test_executorch_and_onnxruntime_devices_train_one_adapter(artifact_cache, tmp_path):
    from safetensors.numpy import load

    from coordinator_harness import ADMIN_TOKEN, JOB_TIER
    from fleet.simulator import FleetSimulation, FleetSpec, format_report
    from fleet.transport import CoordinatorClient

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        spec = FleetSpec(devices=4, fleet="mixed", rounds=2, task="bbcnews", partition="iid", seed=2,
                         dropout=0.0, workers=2, devices_per_round=4, min_updates=4, round_deadline_s=180,
                         onnxruntime_devices=2,
                         job={"model": "tiny", "tier": dict(JOB_TIER), "local_steps": 3, "lr": 0.5,
                              "eval_examples": 10})
        report = FleetSimulation(spec, server.base_url, ADMIN_TOKEN, ENROLLMENT_KEY, tmp_path / "run",
                                 progress=False).run(timeout_s=900)
        admin = CoordinatorClient(server.base_url, token=ADMIN_TOKEN)
        job_id = report["job_id"]
        round_one = admin.json("GET", f"/api/v1/jobs/{job_id}/rounds/1")
        updates = {task["device_name"]: (task["update"]["num_examples"],
                                         load(admin.request("GET", task["update"]["url"]).content))
                   for task in round_one["tasks"] if task["update"]}
        start = load(_adapter_weights(admin.request("GET", f"/api/v1/jobs/{job_id}/adapter?round=0").content))
        merged = load(_adapter_weights(admin.request("GET", f"/api/v1/jobs/{job_id}/adapter?round=1").content))
        devices = {d["name"]: d for d in admin.json("GET", "/api/v1/devices")["devices"]}
    finally:
        server.stop()
    print(format_report(report))
    assert report["status"] == "completed", report["status"]
    assert all(r["accepted"] == 4 for r in report["rounds"])
    assert report["accepted_by_runtime"] == {"executorch": 4, "onnxruntime": 4}
    # Each device trained in the runtime it declared.
    for outcome in report["outcomes"]:
        declared = devices[outcome["device"]]["capabilities"]["runtimes"]
        assert declared == [outcome["runtime"]], (outcome["device"], declared, outcome["runtime"])
    assert sum(name.endswith("-ort") for name in updates) == 2
    # Every update moved away from the start, in both runtimes.
    for name, (_, tensors) in updates.items():
        assert any(not np.allclose(tensors[k], start[k]) for k in start if "lora_B" in k), name
    # The global adapter is the example-weighted mean of all four updates, key by key.
    total = sum(n for n, _ in updates.values())
    for key in start:
        expected = sum(n / total * tensors[key].astype(np.float64) for n, tensors in updates.values())
        np.testing.assert_allclose(merged[key], expected, atol=1e-6)
