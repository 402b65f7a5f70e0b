"""A mixed-tier round over loopback: devices train different tiers of one job, FlexLoRA merges them.

The job's reference tier is the tiny model with LoRA rank 4 on its last 2 layers; FedSpine's
arms are width-pruned (half the heads) at ranks 2 and 4, so every update has to be cut to
and lifted from another shape. The coordinator exports both arms' artifacts before round 1
(``prepare_tiers: all``), devices download and train them with the ExecuTorch runtime, and
the global adapter keeps the reference's shapes throughout.
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


def test_mixed_tier_rounds_complete_and_keep_the_reference_shapes(artifact_cache, tmp_path):
    from safetensors.numpy import load

    from coordinator_harness import ADMIN_TOKEN, JOB_TIER
    from fleet.simulator import FleetSimulation, FleetSpec, format_report
    from fleet.transport import CoordinatorClient

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        spec = FleetSpec(devices=4, fleet="mixed", rounds=2, task="bbcnews", partition="iid", seed=1,
                         dropout=0.0, workers=2, devices_per_round=4, min_updates=4, round_deadline_s=120,
                         job={"model": "tiny", "tier": dict(JOB_TIER), "local_steps": 2, "lr": 0.5,
                              "eval_examples": 10, "strategy": "flexlora", "configurator": "fedspine",
                              "configurator_options": {"prune_ratios": [0.5], "ranks": [2, 4]},
                              "prepare_tiers": "all"})
        report = FleetSimulation(spec, server.base_url, ADMIN_TOKEN, ENROLLMENT_KEY, tmp_path / "run",
                                 progress=False).run(timeout_s=900)
        admin = CoordinatorClient(server.base_url, token=ADMIN_TOKEN)
        job_id = report["job_id"]
        rounds = [admin.json("GET", f"/api/v1/jobs/{job_id}/rounds/{n}") for n in (1, 2)]
        initial = load(_adapter_weights(admin.request("GET", f"/api/v1/jobs/{job_id}/adapter?round=0").content))
        final = load(_adapter_weights(admin.request("GET", f"/api/v1/jobs/{job_id}/adapter?round=2").content))
    finally:
        server.stop()
    print(format_report(report))
    assert report["status"] == "completed"
    assert all(r["accepted"] == 4 for r in report["rounds"])
    # Every task ran one of the two pruned arms, and both were tried (untried arms come first).
    arms = [task["arm"] for r in rounds for task in r["tasks"]]
    assert set(arms) == {"p0.5-r2", "p0.5-r4"}, arms
    assert all(task["tier"]["prune_ratio"] == 0.5 for r in rounds for task in r["tasks"])
    # FedSpine asks devices for the loss of a batch held out of their training: every pass charged
    metrics = [task["update"]["metrics"] for r in rounds for task in r["tasks"]]
    assert all(m["probe_loss_before"] > 0 and m["probe_loss_after"] > 0 and m["steps"] == 2 + 3 for m in metrics)
    assert all(0 <= m["artifact_bytes_downloaded"] for m in metrics)
    # The global adapter kept the reference's keys and shapes, and training changed it.
    assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in initial.items()}
    assert any(not np.allclose(final[k], initial[k]) for k in initial if "lora_B" in k)
    assert all(np.isfinite(v).all() for v in final.values())


def _adapter_weights(zipped: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        return archive.read("adapter_model.safetensors")
