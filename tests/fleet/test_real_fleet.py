"""The demo's path on the real SmolLM2-135M: export by the coordinator, two devices, one round.

Marked ``real`` (a few minutes on 2 cores, still run in CI): the tiny model cannot show that
the demo's tier exports, that a device trains a 200 MB int8 program and that the
coordinator's evaluator scores the real model above chance before any training.

The program is compiled with the portable kernels: lowering SmolLM2's int8 linears to XNNPACK
takes about 7 minutes of the 2-core CI machine, and the XNNPACK path on the real model is
already exported and checked against eager PyTorch by ``tests/test_real_smollm2.py``; this
test is about the coordinator, the device and the evaluator on real weights.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.real


def test_two_smollm2_devices_complete_a_round_and_are_evaluated(tmp_path):
    from fleet.local_coordinator import LocalCoordinator
    from fleet.simulator import FleetSimulation, FleetSpec
    from pockettune.demo import DEMO_JOB

    job = {**DEMO_JOB, "local_steps": 2, "eval_examples": 25, "tier": {**DEMO_JOB["tier"], "kernels": "portable"}}
    job.pop("task")
    spec = FleetSpec(devices=2, fleet="uniform", rounds=1, task="bbcnews", workers=2, devices_per_round=2,
                     min_updates=2, round_deadline_s=900, job=job)
    with LocalCoordinator(tmp_path) as coordinator:
        report = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key,
                                 tmp_path, progress=False).run(timeout_s=1500)
    assert report["status"] == "completed"
    [round_one] = report["rounds"]
    assert round_one["accepted"] == 2
    accepted = [o for o in report["outcomes"] if o["status"] == "accepted"]
    assert all(o["bytes_down"] > 100e6 for o in accepted), "each device fetched the ~200 MB program once"
    assert all(0 < o["flop_utilization"] < 1 for o in accepted)
    # Zero-shot SmolLM2 already beats chance (20%) on 5 topics by label likelihood.
    assert report["initial_evaluation"]["value"] > 0.4
    assert round_one["metric"] == "accuracy" and round_one["value"] is not None
