"""The virtual clock the host cannot move: same seeded simulation, same rounds, loaded or not.

A simulated device's virtual time comes from counted FLOPs and bytes at its profile's
calibrated rates (``fleet/virtual_clock.py``), and a round accepts results in virtual finish
order whatever order the host produces them in (``fleet/simulator.py``). So running the same
seeded simulation twice, the second time with every core of the host kept busy by other
processes, must give the same round membership and the same virtual times, to the bit.
The loaded run also shares its downloads between devices (``fleet.shared_downloads``), which
must move nothing either: each device still counts and is charged its own download.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from fleet_harness import ENROLLMENT_KEY, private_server, seeded_artifact_cache


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _simulate(artifact_cache, folder, shared_downloads=None):
    from coordinator_harness import ADMIN_TOKEN, JOB_TIER
    from fleet.simulator import FleetSimulation, FleetSpec

    # Seed 5 (fleet.device.dropout_step): one dropout per round (a flagship in round 1 after one
    # of its 2 steps, a mid-range phone in round 2 before its first), so each round has four
    # results for three places and one of them is cut.
    spec = FleetSpec(devices=5, fleet="mixed", rounds=2, task="bbcnews", partition="iid", seed=5, dropout=0.2,
                     workers=2, devices_per_round=5, min_updates=3, round_deadline_s=300,
                     job={"model": "tiny", "tier": dict(JOB_TIER), "local_steps": 2, "lr": 0.5, "eval_examples": 0},
                     shared_downloads=None if shared_downloads is None else str(shared_downloads))
    server = private_server(folder / "coordinator", artifact_cache)
    try:
        return FleetSimulation(spec, server.base_url, ADMIN_TOKEN, ENROLLMENT_KEY, folder / "run",
                               progress=False).run(timeout_s=900)
    finally:
        server.stop()


def _virtual(report):
    rounds = [(r["round"], r["close_reason"], r["accepted_devices"], r["virtual_seconds"], r["cut"], r["dropped"])
              for r in report["rounds"]]
    tasks = sorted((o["round"], o["device"], o["status"], o["steps"], o["bytes_down"], o["files_fetched"],
                    o["virtual_download_seconds"], o["virtual_compute_seconds"], o["virtual_upload_seconds"],
                    o["virtual_seconds"]) for o in report["outcomes"])
    return rounds, tasks


def test_host_load_moves_neither_round_membership_nor_virtual_time(artifact_cache, tmp_path):
    from fleet.simulator import format_report

    quiet = _simulate(artifact_cache, tmp_path / "quiet")
    context = mp.get_context("fork")      # plain busy loops: nothing to import in them
    stop = context.Event()
    spinners = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 2)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(0.5)
        loaded = _simulate(artifact_cache, tmp_path / "loaded", shared_downloads=tmp_path / "shared")
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join(10)
            if spinner.is_alive():
                spinner.terminate()
    print(format_report(quiet))
    print(format_report(loaded))
    measured = [sum(o["compute_seconds"] for o in r["outcomes"]) for r in (quiet, loaded)]
    print(f"measured compute seconds, quiet vs loaded host: {measured[0]:.2f} vs {measured[1]:.2f}; "
          f"wall {quiet['wall_seconds']:.0f} vs {loaded['wall_seconds']:.0f} s")
    for report in (quiet, loaded):
        assert report["status"] == "completed"
        assert all(r["out_of_order"] == 0 for r in report["rounds"]), report["rounds"]
    assert _virtual(loaded) == _virtual(quiet)
    # The loaded run's host downloaded each artifact file once per worker process at most (the two
    # workers may both fetch a file before either has kept it): of the 5 devices' copies, at
    # least 4 are links to the shared one.
    shared = sorted((tmp_path / "shared").iterdir())
    assert shared and all(len(p.name) == 64 for p in shared), shared
    assert all(p.stat().st_nlink >= 1 + 4 for p in shared), [(p.name, p.stat().st_nlink) for p in shared]
    rounds, _ = _virtual(quiet)
    # What the run shows: 3 places' worth accepted, in virtual order, and the budget phone cut.
    assert [r[1] for r in rounds] == ["min_updates", "min_updates"]
    assert all(len(r[2]) == 3 and r[4] == 1 and r[5] == 1 for r in rounds), rounds
    cut = [o for o in quiet["outcomes"] if o["status"] == "cut"]
    assert {o["profile"] for o in cut} == {"budget"}, cut
    for r in quiet["rounds"]:
        accepted = [o for o in quiet["outcomes"] if o["round"] == r["round"] and o["status"] == "accepted"]
        assert r["virtual_seconds"] == max(o["virtual_seconds"] for o in accepted)
        assert all(o["virtual_seconds"] > r["virtual_seconds"] for o in cut if o["round"] == r["round"])


def test_a_budget_phone_done_first_on_the_host_is_still_cut(artifact_cache, tmp_path):
    """Train the budget phone first (it is first to finish on the host) and three flagships after
    it; with three places' worth of results wanted, the flagships finish first on the virtual
    clock, so the round takes them and the budget phone's upload comes after it closed."""
    from fleet.data import LocalData
    from fleet.device import DeviceAgent, DeviceConfig
    from fleet.profiles import PROFILES
    from fleet.simulator import deliver_in_virtual_order
    from fleet.transport import RetryPolicy
    from models.tasks import PartitionSpec

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        job = admin.running_job(rounds=1, devices_per_round=4, min_updates=3, local_steps=2)
        names = ["budget", "flagship-1", "flagship-2", "flagship-3"]
        agents = {name: DeviceAgent(DeviceConfig(
            coordinator=server.base_url, state_dir=tmp_path / name, enrollment_key=ENROLLMENT_KEY, name=name,
            data=LocalData.from_task("bbcnews", i, 4, PartitionSpec()), profile=PROFILES[name.split("-")[0]],
            simulated=True, seed=i, retry=RetryPolicy(give_up_after_s=30), peak_gflops=10.0))
            for i, name in enumerate(names)}
        trained, host_finish = {}, {}
        for name in names:                     # the host order: budget phone first
            agent = agents[name]
            agent.ensure_registered()
            task, reason, _ = agent.ask()
            assert task is not None, reason
            trained[name] = agent.train_task(task)
            host_finish[name] = time.monotonic()
            assert trained[name].outcome.status == "trained"
        assert min(host_finish, key=host_finish.get) == "budget"
        virtual = {name: t.outcome.virtual_seconds for name, t in trained.items()}
        assert virtual["budget"] > max(v for n, v in virtual.items() if n != "budget"), virtual

        closes = []

        def close_now(job_id, number):
            # Every result finishes before the virtual deadline: the simulator's only close
            # request comes after the last upload, when the round had frozen by itself.
            assert admin.get(f"/api/v1/jobs/{job_id}/rounds/{number}").json()["status"] != "open"
            closes.append(number)

        final = deliver_in_virtual_order([t.outcome.to_dict() for t in trained.values()],
                                         lambda o: agents[o["device"]].upload(trained[o["device"]]).to_dict(),
                                         300.0, close_now)
        assert closes == [1]
        statuses = {o["device"]: o["status"] for o in final}
        round_one = admin.get(f"/api/v1/jobs/{job['job_id']}/rounds/1").json()
    finally:
        server.stop()
    assert statuses == {"flagship-1": "accepted", "flagship-2": "accepted", "flagship-3": "accepted",
                        "budget": "cut"}, statuses
    assert [o["device"] for o in final][-1] == "budget"
    assert round_one["close_reason"] == "min_updates"
    assert sorted(t["device_name"] for t in round_one["tasks"] if t.get("update")) == names[1:]
