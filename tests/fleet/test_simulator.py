"""A simulated fleet: 8 tiny devices, 25% dropout, 3 rounds, against a real coordinator."""

from __future__ import annotations

import pytest

from fleet_harness import ENROLLMENT_KEY, private_server, seeded_artifact_cache


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


def test_fleet_of_eight_with_dropout_completes_three_rounds(artifact_cache, tmp_path):
    from coordinator_harness import ADMIN_TOKEN, JOB_TIER
    from fleet.simulator import FleetSimulation, FleetSpec, format_report

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        spec = FleetSpec(devices=8, fleet="mixed", rounds=3, task="bbcnews", partition="dirichlet:0.5", seed=3,
                         dropout=0.25, workers=2, devices_per_round=8, min_updates=4, round_deadline_s=60,
                         job={"model": "tiny", "tier": dict(JOB_TIER), "local_steps": 2, "lr": 0.5,
                              "eval_examples": 10, "eval_every": 2})
        report = FleetSimulation(spec, server.base_url, ADMIN_TOKEN, ENROLLMENT_KEY, tmp_path / "run",
                                 progress=False).run(timeout_s=600)
    finally:
        server.stop()
    print(format_report(report))
    assert report["status"] == "completed"
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert all(r["accepted"] >= 1 for r in report["rounds"])
    statuses = [o["status"] for o in report["outcomes"]]
    assert "dropped" in statuses, "with 25% dropout over 24 tasks some device must have dropped out"
    assert all(r["virtual_seconds"] > 0 for r in report["rounds"])
    # The global adapters eval_every 2 schedules (rounds 0, 2 and the last, 3) were evaluated on
    # held-out articles, and round 1's was not.
    assert report["initial_evaluation"]["num_examples"] == 10
    assert [r["value"] is not None for r in report["rounds"]] == [False, True, True]
    assert all(r["metric"] == "accuracy" and 0 <= r["value"] <= 1 for r in report["rounds"][1:])
    # Budget devices (10x slower, 1 Mbit/s) take longer on the virtual clock than flagships
    # doing the same task (same program, same steps) in the same round. Compared per round, not
    # per second of real compute: a tiny step takes milliseconds, so a flagship's virtual time
    # is mostly its fixed link latency, and that ratio says nothing about the profiles.
    by_round: dict[int, dict[str, list[float]]] = {}
    for o in report["outcomes"]:
        if o["status"] in ("accepted", "cut") or o["status"].startswith("rejected"):   # trained every step
            by_round.setdefault(o["round"], {}).setdefault(o["profile"], []).append(o["virtual_seconds"])
    compared = [r for r in by_round.values() if {"budget", "flagship"} <= set(r)]
    assert compared, by_round
    assert all(min(r["budget"]) > max(r["flagship"]) for r in compared), by_round
