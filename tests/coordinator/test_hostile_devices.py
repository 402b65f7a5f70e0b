"""A hostile (or broken) device against a served coordinator, over real HTTP, on SQLite and PostgreSQL.

Each test is the regression test of a defect found by black-box requests: one device stalling
every job's rounds, one device taking over FedAvg with a claimed example count, integers beyond
64 bits, deeply nested JSON, job settings that cannot run, updates replayed into another round,
duplicated safetensors keys, tokens that could not be revoked, tasks a device must refuse, and
error messages that echoed the whole input. "Changes nothing" is checked as in
test_coordinator_validation.py: every table's row count, the blob files and the staging folder.
"""

from __future__ import annotations

import json
import re
import struct
import time
from datetime import datetime

import numpy as np
import requests

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    CAPABILITIES, ENROLLMENT_KEY, JOB_TIER, TICK_S, FakeTrainer, artifact_cache, assert_error, backend,
    cleanup_jobs, count_rows, fedavg_by_hand, manifest_of, meta, query, record_measurement, register,
    safetensors_bytes, server, start_adapter, upload)

BIG = 2**63


def _snapshot(server):
    return count_rows(server.database), server.blob_files(), server.staging_files()


def _task(device) -> dict:
    response = device.get("/api/v1/tasks/next")
    assert response.status_code == 200, (response.status_code, response.headers, response.text)
    return response.json()


def _one_device_job(server, cleanup_jobs, name: str, seed: int, **job_fields):
    """A running job (cancelled after the test), one registered device, its task and a valid update."""
    admin = server.admin()
    job = admin.running_job(**job_fields)
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, name=name)
    task = _task(device)
    update = FakeTrainer(manifest_of(device, task)).update(start_adapter(admin, job["job_id"], 0), seed=seed)
    return admin, job, device, task, update


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- 1. one job's failing aggregation never stops another job ----------------------------------

def test_a_round_whose_aggregation_fails_is_failed_alone_and_other_jobs_close_on_time(server, cleanup_jobs):
    admin = server.admin()
    # The original attack is refused at the door now: 2^63-1 examples next to an honest 16.
    bait = admin.running_job(rounds=1, devices_per_round=2, min_updates=2)
    cleanup_jobs.append(bait["job_id"])
    honest, attacker = (register(server, name=f"bait-{i}")[1] for i in range(2))
    tasks = [_task(honest), _task(attacker)]
    start = start_adapter(admin, bait["job_id"], 0)
    trainer = FakeTrainer(manifest_of(honest, tasks[0]))
    assert upload(honest, tasks[0], trainer.update(start, seed=1), meta(num_examples=16)).status_code == 201
    before = _snapshot(server)
    refused = upload(attacker, tasks[1], trainer.update(start, seed=2), meta(num_examples=BIG - 1))
    assert_error(refused, 422, "invalid_field")
    assert _snapshot(server) == before
    assert admin.job(bait["job_id"])["round_history"][0]["status"] == "open"

    # A round whose aggregation cannot succeed (here: an accepted update's blob corrupted on disk),
    # frozen at its deadline by the watcher, ahead of another job's round in the watcher's order.
    poisoned = admin.running_job(rounds=2, devices_per_round=3, min_updates=3, round_deadline_s=3)
    cleanup_jobs.append(poisoned["job_id"])
    devices = [register(server, name=f"poison-{i}")[1] for i in range(2)]
    start = start_adapter(admin, poisoned["job_id"], 0)
    for i, device in enumerate(devices):
        task = _task(device)
        accepted = upload(device, task, trainer.update(start, seed=10 + i), meta())
        assert accepted.status_code == 201, accepted.text
        sha = accepted.json()["sha256"]
        (server.blob_dir / sha[:2] / sha).write_bytes(b"not a safetensors file any more")
    other = admin.running_job(rounds=1, devices_per_round=2, min_updates=2, round_deadline_s=2)
    cleanup_jobs.append(other["job_id"])

    done = admin.wait_job(other["job_id"], lambda j: j["status"] == "completed", timeout=30,
                          what="completed at its deadline")
    closed = done["round_history"][0]
    late_by = (_when(closed["closed_at"]) - _when(closed["deadline"])).total_seconds()
    assert closed["status"] == "closed" and closed["close_reason"] == "deadline"
    assert late_by <= TICK_S + 0.8, f"the other job's round closed {late_by:.2f} s after its deadline"
    record_measurement("other_job_round_late_after_a_poisoned_round",
                       {"backend": server.database.backend, "seconds_after_deadline": round(late_by, 3),
                        "tick_s": TICK_S})

    failed = admin.wait_job(poisoned["job_id"], lambda j: j["status"] in ("failed", "completed"), timeout=30)
    round_one = failed["round_history"][0]
    assert round_one["status"] == "failed" and round_one["adapter"] is None, round_one
    assert "SafetensorError" in round_one["error"] or "Error" in round_one["error"], round_one
    assert failed["status"] == "failed" and failed["error"].startswith("round 1 could not be aggregated: ")
    assert failed["current_round"] is None and len(failed["round_history"]) == 1
    detail = admin.get(f"/api/v1/jobs/{poisoned['job_id']}/rounds/1").json()
    assert detail["status"] == "failed" and detail["error"] == round_one["error"]
    # Reported once, not retried (and logged) on every tick.
    time.sleep(5 * TICK_S)
    failures = re.findall(rf"job {poisoned['job_id']} round 1: aggregation failed", server.log())
    assert len(failures) == 1, failures
    # The public page of a failed job renders, with its reason.
    page = requests.get(f"{server.base_url}/jobs/{poisoned['job_id']}", timeout=30)
    assert page.status_code == 200 and "could not be aggregated" in page.text
    page = requests.get(f"{server.base_url}/jobs/{poisoned['job_id']}/rounds/1", timeout=30)
    assert page.status_code == 200 and "aggregation failed: " in page.text


def test_a_rejected_row_leaves_no_blob_behind(server, cleanup_jobs):
    """If the database refuses the update's row, the update's bytes are not published either."""
    _, _, device, task, update = _one_device_job(server, cleanup_jobs, "refused-row", 3, rounds=1,
                                                 devices_per_round=1, min_updates=1)
    engine = server.database.engine()
    sqlite = server.database.backend == "sqlite"
    statements = ([f"CREATE TRIGGER refuse_{task['task_id']} BEFORE INSERT ON updates "
                   f"WHEN NEW.task_id = {task['task_id']} BEGIN SELECT RAISE(ABORT, 'refused by test'); END"]
                  if sqlite else
                  [f"CREATE FUNCTION refuse_{task['task_id']}() RETURNS trigger AS $$ BEGIN "
                   f"IF NEW.task_id = {task['task_id']} THEN RAISE EXCEPTION 'refused by test'; END IF; "
                   "RETURN NEW; END $$ LANGUAGE plpgsql",
                   f"CREATE TRIGGER refuse_{task['task_id']} BEFORE INSERT ON updates "
                   f"FOR EACH ROW EXECUTE FUNCTION refuse_{task['task_id']}()"])
    drops = ([f"DROP TRIGGER refuse_{task['task_id']}"] if sqlite else
             [f"DROP TRIGGER refuse_{task['task_id']} ON updates", f"DROP FUNCTION refuse_{task['task_id']}()"])
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
        before = _snapshot(server)
        assert_error(upload(device, task, update, meta()), 500, "internal_error")
        assert _snapshot(server) == before
    finally:
        with engine.begin() as conn:
            for statement in drops:
                conn.exec_driver_sql(statement)
        engine.dispose()
    assert upload(device, task, update, meta()).status_code == 201


# --- 2. a claimed example count cannot take over the aggregate ----------------------------------

def test_claimed_examples_are_capped_by_the_task_and_outliers_are_clipped(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=4, min_updates=4, max_update_norm=1000.0)
    cleanup_jobs.append(job["job_id"])
    devices = [register(server, name=f"weights-{i}")[1] for i in range(4)]
    tasks = [_task(d) for d in devices]
    cap = tasks[0]["upload"]["max_num_examples"]
    assert cap == tasks[0]["train"]["steps"] * tasks[0]["train"]["batch"] == 40
    start = start_adapter(admin, job["job_id"], 0)
    trainer = FakeTrainer(manifest_of(devices[0], tasks[0]))
    honest = [trainer.update(start, seed=20 + i) for i in range(3)]
    # The attacker's change points far away: 500 times an honest device's.
    attack = {k: (start[k] + 500 * (trainer.update(start, seed=99)[k] - start[k])).astype(np.float32) for k in start}
    before = _snapshot(server)
    for claim in (10**15, 2**40, cap + 1):
        assert_error(upload(devices[3], tasks[3], attack, meta(num_examples=claim)), 422, "invalid_field")
    assert _snapshot(server) == before
    for device, task, tensors in zip(devices[:3], tasks[:3], honest):
        assert upload(device, task, tensors, meta(num_examples=16)).status_code == 201
    last = upload(devices[3], tasks[3], attack, meta(num_examples=cap))
    assert last.status_code == 201 and last.json()["round_status"] == "closed", last.text

    norms = [float(np.sqrt(sum(np.sum((t[k].astype(np.float64) - start[k]) ** 2) for k in start)))
             for t in [*honest, attack]]
    bound = 4.0 * float(np.median(norms))   # the job's default norm_clip_factor times the round's median
    assert norms[3] > bound and all(n <= bound for n in norms[:3])
    clipped = {k: (start[k] + (bound / norms[3]) * (attack[k].astype(np.float64) - start[k])).astype(np.float32)
               for k in start}
    expected = fedavg_by_hand([(16, honest[0]), (16, honest[1]), (16, honest[2]), (cap, clipped)])
    served = start_adapter(admin, job["job_id"], 1)
    for key in expected:
        np.testing.assert_allclose(served[key], expected[key], rtol=1e-5, atol=1e-6)
    # The attacker's weight is its capped share, and its pull is bounded: it did not take over.
    change = lambda t: np.concatenate([(t[k].astype(np.float64) - start[k]).ravel() for k in sorted(start)])  # noqa: E731
    towards_attacker = float(np.dot(change(served), change(attack)) / np.dot(change(attack), change(attack)))
    assert towards_attacker < 0.01, towards_attacker
    adapter = admin.job(job["job_id"])["round_history"][0]["adapter"]
    assert adapter["num_examples"] == 48 + cap and adapter["num_clipped"] == 1


# --- 3. integers beyond 64 bits and numbers beyond any device ----------------------------------

def test_numbers_out_of_range_are_refused_at_the_door_and_change_nothing(server, cleanup_jobs):
    admin, job, device, task, update = _one_device_job(server, cleanup_jobs, "big-numbers", 4, rounds=1,
                                                       devices_per_round=2, min_updates=2, eval_examples=0)
    before = _snapshot(server)
    cases = [("num_examples", BIG), ("num_examples", BIG - 1), ("bytes_downloaded", BIG), ("bytes_uploaded", BIG),
             ("bytes_uploaded", 2**62), ("loss_before", 1e308), ("loss_after", 10**400),
             ("train_seconds", 10**400), ("train_seconds", 1e300)]
    for field, value in cases:
        body = json.dumps({**meta(), "start_adapter_sha256": task["adapter"]["sha256"], field: value})
        refused = assert_error(upload(device, task, update, body), 422, "invalid_field")
        assert f"meta.{field}" in refused["error"]["message"]
        assert len(refused["error"]["message"]) < 400, refused
    metrics = {"compute_seconds": 10**400, "peak_gflops": 1e308, "steps": BIG, "flops_per_step": 1e300}
    for key, value in metrics.items():
        body = json.dumps({**meta(), "start_adapter_sha256": task["adapter"]["sha256"], "metrics": {key: value}})
        assert_error(upload(device, task, update, body), 422, "invalid_field")
    assert _snapshot(server) == before, "a refused upload left a row or a blob behind"
    # Ids beyond any row are no route: 404, not a database overflow.
    for path in (f"/api/v1/tasks/{BIG}/result", f"/api/v1/tasks/{10**30}/result"):
        assert_error(device.post(path, files={"update": ("u", b"x")}, data={"meta": "{}"}), 404, "not_found")
    for path in (f"/api/v1/jobs/{BIG}", f"/api/v1/jobs/{job['job_id']}/rounds/{BIG}", f"/api/v1/devices/{BIG}"):
        assert_error(admin.get(path), 404, "not_found")
    assert requests.get(f"{server.base_url}/jobs/{BIG}", timeout=30).status_code == 404
    generate = admin.post(f"/api/v1/jobs/{job['job_id']}/generate", json={"prompt": "Hi", "round": BIG})
    assert_error(generate, 422, "invalid_field")
    for body in ({"prompt": "Hi", "alpha": 10**400}, {"prompt": "Hi", "seed": 10**400}):
        assert_error(admin.post(f"/api/v1/jobs/{job['job_id']}/generate", json=body), 422, "invalid_field")
    # An accepted update with the largest transfer claims keeps the public job page working.
    assert upload(device, task, update, meta(bytes_uploaded=2**40, bytes_downloaded=2**40)).status_code == 201
    page = requests.get(f"{server.base_url}/jobs/{job['job_id']}", timeout=30)
    assert page.status_code == 200, page.text[:500]


# --- 4. deeply nested JSON ---------------------------------------------------------------------

def test_deeply_nested_json_is_a_400_on_every_json_endpoint(server, cleanup_jobs):
    admin, job, device, task, update = _one_device_job(server, cleanup_jobs, "nested", 5, rounds=1,
                                                       devices_per_round=2, min_updates=2)
    deep = "[" * 100_000
    headers = {"Content-Type": "application/json"}
    before = _snapshot(server)
    assert_error(requests.post(f"{server.base_url}/api/v1/devices", data=deep, headers=headers, timeout=30),
                 400, "invalid_json")
    assert_error(device.post("/api/v1/devices/heartbeat", data=deep, headers=headers), 400, "invalid_json")
    assert_error(admin.post("/api/v1/jobs", data=deep, headers=headers), 400, "invalid_json")
    assert_error(admin.post("/api/v1/split-jobs", data=deep, headers=headers), 400, "invalid_json")
    assert_error(admin.post(f"/api/v1/jobs/{job['job_id']}/generate", data=deep, headers=headers), 400,
                 "invalid_json")
    assert_error(upload(device, task, update, deep), 400, "invalid_json")
    assert_error(upload(device, task, update, deep, meta_as_file=True), 400, "invalid_json")
    # Nesting within the limit still parses (and is then refused for what it says).
    nested_options = {"enrollment_key": ENROLLMENT_KEY, "name": "n", "platform": "p",
                      "capabilities": {**CAPABILITIES, "runtimes": [[["executorch"]]]}}
    assert_error(requests.post(f"{server.base_url}/api/v1/devices", json=nested_options, timeout=30), 422,
                 "invalid_field")
    assert _snapshot(server) == before


# --- 5. job creation refuses what it cannot run ------------------------------------------------

def test_job_and_registration_values_out_of_range_are_422_and_the_job_list_stays_strict_json(server):
    admin = server.admin()
    base = {"model": "tiny", "task": "bbcnews", "rounds": 1, "tier": dict(JOB_TIER), "eval_examples": 0}
    before = _snapshot(server)
    bad_tiers = [{field: value} for field in ("lora_rank", "batch", "seq", "lora_layers")
                 for value in (2.5, 10**30, BIG, "4", True)]
    bad_tiers += [{"prune_ratio": 10**400}, {"rank_pattern": [4, 2.5]}, {"train": {"momentum": 10**400}},
                  {"train": {"weight_decay": 1e308}}, {"train": {"betas": [0.9, 2]}}, {"train": {"eps": 10**30}}]
    for tier in bad_tiers:
        response = admin.post("/api/v1/jobs", json={**base, "tier": {**JOB_TIER, **tier}})
        assert_error(response, 422, "invalid_field")
    for field, raw in (("lora_rank", "1e999"), ("seq", "1e999"), ("batch", "-1e999")):
        body = json.dumps({**base, "tier": {**JOB_TIER, field: "INF"}}).replace('"INF"', raw)
        assert_error(admin.post("/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}), 422,
                     "invalid_field")
    options = json.dumps({**base, "configurator": "legend"})[:-1] + ', "configurator_options": {"x": 1e999}}'
    assert_error(admin.post("/api/v1/jobs", data=options, headers={"Content-Type": "application/json"}), 422,
                 "invalid_field")
    for field, value in (("round_deadline_s", 10**30), ("round_deadline_s", 1e308), ("lr", 1e308),
                         ("lr", 10**400), ("max_update_norm", 1e308), ("local_steps", BIG), ("min_ram_mb", BIG),
                         ("rounds", BIG), ("devices_per_round", 2.5), ("eval_examples", BIG),
                         ("norm_clip_factor", 0.5), ("norm_clip_factor", 1e308)):
        assert_error(admin.post("/api/v1/jobs", json={**base, field: value}), 422, "invalid_field")
    registration = {"enrollment_key": ENROLLMENT_KEY, "name": "n", "platform": "p", "capabilities": CAPABILITIES}
    for field, value in (("ram_mb", BIG), ("ram_mb", 2.5), ("gflops", 1e308), ("gflops", 10**400),
                         ("bandwidth_mbps", 1e308), ("cores", BIG), ("optimizers", "sgd"), ("optimizers", [1])):
        body = {**registration, "capabilities": {**CAPABILITIES, field: value}}
        assert_error(requests.post(f"{server.base_url}/api/v1/devices", json=body, timeout=30), 422, "invalid_field")
    assert _snapshot(server) == before
    listed = admin.get("/api/v1/jobs")
    assert listed.status_code == 200
    json.loads(listed.text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


def test_error_messages_do_not_echo_the_whole_input(server):
    admin = server.admin()
    huge_name = "x" * 100_000  # the test server takes bodies up to 1 MiB
    base = {"model": "tiny", "task": "bbcnews", "rounds": 1, "tier": dict(JOB_TIER), "eval_examples": 0}
    for body in ({**base, "model": huge_name}, {**base, "strategy": huge_name}, {**base, "name": huge_name},
                 {**base, **{f"unknown_{i}": 1 for i in range(30_000)}},
                 {**base, "tier": {**JOB_TIER, "lora_targets": [huge_name]}}):
        refused = assert_error(admin.post("/api/v1/jobs", json=body), 422, "invalid_field")
        assert len(refused["error"]["message"]) <= 1200, len(refused["error"]["message"])
    many_keys = {"enrollment_key": ENROLLMENT_KEY, "name": "n", "platform": "p",
                 "capabilities": {**CAPABILITIES, **{f"k{i}": 0 for i in range(30_000)}}}
    refused = assert_error(requests.post(f"{server.base_url}/api/v1/devices", json=many_keys, timeout=60), 422,
                           "invalid_field")
    assert len(refused["error"]["message"]) <= 1200 and "more" in refused["error"]["message"]


# --- 6. an update is bound to its task; duplicated keys; revoked devices -----------------------

def test_an_update_made_for_another_round_is_refused(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=2, devices_per_round=1, min_updates=1)
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, name="replayer")
    first = _task(device)
    trainer = FakeTrainer(manifest_of(device, first))
    round_one = trainer.update(start_adapter(admin, job["job_id"], 0), seed=6)
    first_meta = {**meta(), "start_adapter_sha256": first["adapter"]["sha256"]}
    assert upload(device, first, round_one, first_meta).status_code == 201
    second = _task(device)
    assert second["round"] == 2 and second["adapter"]["sha256"] != first["adapter"]["sha256"]
    before = _snapshot(server)
    refused = assert_error(upload(device, second, round_one, first_meta), 422, "invalid_field")
    assert "start_adapter_sha256" in refused["error"]["message"]
    missing = {k: v for k, v in first_meta.items() if k != "start_adapter_sha256"}
    assert_error(upload(device, second, round_one, json.dumps(missing)), 422, "invalid_field")
    assert _snapshot(server) == before
    fresh = trainer.update(start_adapter(admin, job["job_id"], 1), seed=7)
    assert upload(device, second, fresh, meta()).status_code == 201


def test_a_safetensors_header_with_a_duplicated_key_is_malformed(server, cleanup_jobs):
    _, _, device, task, update = _one_device_job(server, cleanup_jobs, "duplicator", 8, rounds=1,
                                                 devices_per_round=1, min_updates=1)
    good = safetensors_bytes(update)
    (header_len,) = struct.unpack("<Q", good[:8])
    header = good[8:8 + header_len].decode()
    first_key = next(iter(json.loads(header)))
    entry = json.dumps({first_key: json.loads(header)[first_key]})[1:-1]
    duplicated = ("{" + entry + "," + header[1:]).encode()   # the first entry twice, same offsets
    padded = duplicated + b" " * ((8 - len(duplicated) % 8) % 8)
    data = struct.pack("<Q", len(padded)) + padded + good[8 + header_len:]
    before = _snapshot(server)
    refused = assert_error(upload(device, task, data, meta()), 400, "malformed_update")
    assert "duplicate key" in refused["error"]["message"]
    assert _snapshot(server) == before


def test_an_admin_can_disable_a_device_and_its_token_is_refused(server, cleanup_jobs):
    admin = server.admin()
    device_id, device = register(server, name="lost-phone")
    assert device.post("/api/v1/devices/heartbeat", json={}).status_code == 200
    assert_error(device.post(f"/api/v1/devices/{device_id}/disable"), 403, "forbidden")
    disabled = admin.post(f"/api/v1/devices/{device_id}/disable")
    assert disabled.status_code == 200 and disabled.json()["disabled_at"] is not None
    for response in (device.post("/api/v1/devices/heartbeat", json={}), device.get("/api/v1/tasks/next"),
                     device.post("/api/v1/tasks/1/result", files={"update": ("u", b"x")}, data={"meta": "{}"})):
        assert_error(response, 403, "forbidden")
    assert admin.get(f"/api/v1/devices/{device_id}").json()["disabled_at"] is not None
    assert_error(admin.post(f"/api/v1/devices/{BIG}/disable"), 404, "not_found")
    enabled = admin.post(f"/api/v1/devices/{device_id}/enable")
    assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
    assert device.post("/api/v1/devices/heartbeat", json={}).status_code == 200


# --- 9. no device is offered a task it would refuse ---------------------------------------------

def test_devices_get_only_tasks_whose_optimizer_they_declare(server, cleanup_jobs):
    from coordinator.api.tasks import NO_TASK_HEADER

    admin = server.admin()
    job = admin.running_job(tier={**JOB_TIER, "train": {"optimizer": "adamw"}}, lr=0.002, devices_per_round=2,
                            min_updates=2)
    cleanup_jobs.append(job["job_id"])
    _, sgd_phone = register(server, name="sgd-phone", capabilities={**CAPABILITIES, "optimizers": ["sgd"]})
    _, old_phone = register(server, name="no-optimizers")   # declares none: sgd only
    for phone in (sgd_phone, old_phone):
        answer = phone.get("/api/v1/tasks/next")
        if answer.status_code == 200:   # another test's job may be open and take it
            assert answer.json()["job_id"] != job["job_id"], answer.json()
        else:
            assert answer.status_code == 204 and "adamw" in answer.headers[NO_TASK_HEADER]
    _, adamw_device = register(server, name="adamw-device",
                               capabilities={**CAPABILITIES, "optimizers": ["sgd", "adamw"]})
    offered = _task(adamw_device)
    assert offered["job_id"] == job["job_id"] and offered["train"]["optimizer"] == "adamw"
