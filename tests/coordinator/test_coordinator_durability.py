"""SIGKILL mid-round and restart: every acknowledged update survives and the round goes on.

A fresh database (SQLite file, or a PostgreSQL schema) and instance folder per backend;
the coordinator is killed with SIGKILL (no cleanup handlers run, as in a crash or the OOM
killer) while uploads are in flight, then restarted on the same database and instance.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    FakeTrainer, ServedCoordinator, artifact_cache, backend,
    fedavg_by_hand, meta, new_database, query, register, start_adapter,
    upload)

DEVICES = 8


def _safe_upload(device, task, tensors, body):
    try:
        return upload(device, task, tensors, body)
    except requests.RequestException as exc:  # the server died under this request
        return exc


def test_sigkill_mid_round_then_restart_keeps_every_accepted_update(backend, artifact_cache, tmp_path, request):
    database = new_database(backend, tmp_path)
    request.addfinalizer(database.drop)
    instance = tmp_path / "instance"
    server = ServedCoordinator(database, instance, artifact_cache).start()
    request.addfinalizer(lambda: server.stop())
    admin = server.admin()
    job = admin.running_job(rounds=2, devices_per_round=DEVICES, min_updates=DEVICES, round_deadline_s=600)
    job_id = job["job_id"]
    devices = [register(server, name=f"crash-{i}")[1] for i in range(DEVICES)]
    tokens = [d.token for d in devices]
    tasks = [d.get("/api/v1/tasks/next").json() for d in devices]
    manifest = admin.get(job["artifact"]["url"]).json()
    trainer = FakeTrainer(manifest)
    start = start_adapter(admin, job_id, 0)
    sent = [(3 + i, trainer.update(start, seed=500 + i)) for i in range(DEVICES)]
    round_opened = admin.job(job_id)["round_history"][0]["opened_at"]

    # Two uploads acknowledged before the crash, five in flight when it happens, one never sent.
    acked = {}
    for i in (0, 1):
        response = upload(devices[i], tasks[i], sent[i][1], meta(num_examples=sent[i][0]))
        assert response.status_code == 201, response.text
        acked[i] = response.json()
    in_flight = list(range(2, DEVICES - 1))
    outcomes = {}
    first_answer = threading.Event()

    def send(i):
        outcome = _safe_upload(devices[i], tasks[i], sent[i][1], meta(num_examples=sent[i][0]))
        outcomes[i] = outcome
        first_answer.set()

    with ThreadPoolExecutor(len(in_flight)) as pool:
        for i in in_flight:
            pool.submit(send, i)
        first_answer.wait(10)
        server.kill()
    for i, outcome in outcomes.items():
        if isinstance(outcome, requests.Response) and outcome.status_code == 201:
            acked[i] = outcome.json()
    if backend == "sqlite":
        assert query(database, "PRAGMA integrity_check") == [("ok",)]

    # Restart on the same database and instance folder.
    server = ServedCoordinator(database, instance, artifact_cache).start()
    admin = server.admin()
    devices = [server.device(token) for token in tokens]
    detail = admin.job(job_id)
    assert detail["status"] == "running" and detail["current_round"] == 1
    assert detail["round_history"][0]["opened_at"] == round_opened, "the same round continues"
    stored = {row[0]: row[1:] for row in query(database, "SELECT task_id, id, sha256 FROM updates")}
    assert detail["round_history"][0]["num_updates"] == len(stored)
    for i, body in acked.items():
        update_id, sha256 = stored[tasks[i]["task_id"]]
        assert (update_id, sha256) == (body["update_id"], body["sha256"]), f"acknowledged update {i} was lost"
        blob = server.blob_dir / sha256[:2] / sha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256, f"blob of update {i} is damaged"
    assert server.staging_files() == [] or all(p.stat().st_size >= 0 for p in server.staging_files())

    # Devices whose answer was lost retry: accepted now, or 409 if their commit had landed.
    for i in [*in_flight, DEVICES - 1]:
        if i in acked:
            continue
        response = upload(devices[i], tasks[i], sent[i][1], meta(num_examples=sent[i][0]))
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "already_submitted"
            assert tasks[i]["task_id"] in stored
        else:
            assert response.status_code == 201, response.text
    detail = admin.wait_job(job_id, lambda j: j["round_history"][0]["status"] == "closed", timeout=60)
    assert detail["round_history"][0]["num_updates"] == DEVICES
    aggregated = start_adapter(admin, job_id, 1)
    for key, value in fedavg_by_hand(sent).items():
        np.testing.assert_allclose(aggregated[key], value, rtol=0, atol=1e-6)

    # Round 2: half the devices upload, then a crash right after the round was frozen (the
    # state a SIGKILL between the freezing commit and the aggregation leaves behind).
    round_two = [d.get("/api/v1/tasks/next").json() for d in devices[:3]]
    assert {t["round"] for t in round_two} == {2}
    start_two = start_adapter(admin, job_id, 1)
    sent_two = [(2 + i, trainer.update(start_two, seed=900 + i)) for i in range(3)]
    for device, task, (n, tensors) in zip(devices, round_two, sent_two):
        assert upload(device, task, tensors, meta(num_examples=n)).status_code == 201
    server.kill()
    _freeze_round(database, job_id, 2)
    server = ServedCoordinator(database, instance, artifact_cache).start()
    admin = server.admin()
    final = admin.wait_job(job_id, lambda j: j["status"] == "completed", timeout=60,
                           what="finished the round a crash left aggregating")
    assert final["round_history"][1]["num_updates"] == 3
    aggregated = start_adapter(admin, job_id, 2)
    for key, value in fedavg_by_hand(sent_two).items():
        np.testing.assert_allclose(aggregated[key], value, rtol=0, atol=1e-6)
    assert query(database, "SELECT COUNT(*) FROM global_adapters WHERE job_id = :j", j=job_id) == [(3,)]


def _freeze_round(database, job_id: int, number: int) -> None:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from coordinator.models import CloseReason, Round, utcnow
    from coordinator.services.lifecycle import freeze

    engine = database.engine()
    try:
        with Session(engine) as session, session.begin():
            round_ = session.scalars(select(Round).where(Round.job_id == job_id, Round.number == number)).one()
            freeze(round_, CloseReason.DEADLINE, utcnow())
    finally:
        engine.dispose()
    time.sleep(0)  # the database now says: frozen, not aggregated
