"""50 devices upload to the same round at once (threads, real HTTP): nothing lost, one close.

Runs on SQLite and PostgreSQL. The wall time of the 50 simultaneous uploads is printed
(``pytest -s``) and, with ``POCKETTUNE_MEASUREMENTS=FILE``, recorded for docs/coordinator.md.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    FakeTrainer, artifact_cache, backend, cleanup_jobs, fedavg_by_hand,
    meta, query, record_measurement, register, server, start_adapter,
    upload)

DEVICES = 50
EXTRA = 5  # more devices than places: exactly DEVICES of them may be selected


def test_50_concurrent_uploads_lose_nothing_and_close_the_round_once(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=2, devices_per_round=DEVICES, min_updates=DEVICES, round_deadline_s=600)
    job_id = job["job_id"]
    cleanup_jobs.append(job_id)
    devices = [register(server, name=f"crowd-{i}")[1] for i in range(DEVICES + EXTRA)]

    # Everyone asks for a task at the same moment: exactly DEVICES places are given, once each.
    gate = threading.Barrier(len(devices))

    def ask(device):
        gate.wait()
        return device.get("/api/v1/tasks/next")

    with ThreadPoolExecutor(len(devices)) as pool:
        offers = list(pool.map(ask, devices))
    assert sorted(r.status_code for r in offers) == [200] * DEVICES + [204] * EXTRA
    chosen = [(d, r.json()) for d, r in zip(devices, offers) if r.status_code == 200]
    assert len({task["task_id"] for _, task in chosen}) == DEVICES

    manifest = admin.get(job["artifact"]["url"]).json()
    start = start_adapter(admin, job_id, 0)
    trainer = FakeTrainer(manifest)
    sent = [(i % 7 + 1, trainer.update(start, seed=1000 + i)) for i in range(DEVICES)]

    gate = threading.Barrier(DEVICES)

    def send(i):
        device, task = chosen[i]
        gate.wait()
        began = time.perf_counter()
        response = upload(device, task, sent[i][1], meta(num_examples=sent[i][0]))
        return response, began, time.perf_counter()

    with ThreadPoolExecutor(DEVICES) as pool:
        results = list(pool.map(send, range(DEVICES)))
    wall = max(end for _, _, end in results) - min(began for _, began, _ in results)
    assert [r.status_code for r, _, _ in results] == [201] * DEVICES, [r.text for r, _, _ in results if
                                                                        r.status_code != 201][:3]
    bodies = [r.json() for r, _, _ in results]
    # Every accepted update was counted exactly once: the counts 1..50 each appear once.
    assert sorted(b["accepted_updates"] for b in bodies) == list(range(1, DEVICES + 1))
    last = next(b for b in bodies if b["accepted_updates"] == DEVICES)
    assert last["round_status"] in ("aggregating", "closed")

    detail = admin.wait_job(job_id, lambda j: j["round_history"][0]["status"] == "closed", timeout=60)
    first = detail["round_history"][0]
    assert first["num_updates"] == DEVICES and first["close_reason"] == "min_updates"
    assert detail["current_round"] == 2 and [r["status"] for r in detail["round_history"]] == ["closed", "open"]
    [(round_one_id,)] = query(server.database, "SELECT id FROM rounds WHERE job_id = :j AND number = 1", j=job_id)
    assert query(server.database, "SELECT COUNT(*), COUNT(DISTINCT task_id) FROM updates WHERE round_id = :r",
                 r=round_one_id) == [(DEVICES, DEVICES)]
    assert query(server.database, "SELECT COUNT(*) FROM global_adapters WHERE job_id = :j AND round = 1",
                 j=job_id) == [(1,)]
    assert query(server.database, "SELECT COUNT(*) FROM rounds WHERE job_id = :j AND number = 2",
                 j=job_id) == [(1,)]
    assert server.log().count(f"job {job_id} round 1 closed") == 1, "the round must be aggregated exactly once"
    aggregated = start_adapter(admin, job_id, 1)
    for key, value in fedavg_by_hand(sent).items():
        np.testing.assert_allclose(aggregated[key], value, rtol=0, atol=1e-6)

    durations = [end - began for _, began, end in results]
    record_measurement(f"concurrent_uploads_{server.database.backend}", {
        "devices": DEVICES, "wall_s": round(wall, 3), "median_request_s": round(statistics.median(durations), 3),
        "max_request_s": round(max(durations), 3), "update_bytes": bodies[0]["size"]})
