"""The coordinator's HTTP API over real HTTP: health, JSON errors, registration, tokens, jobs.

Every test here runs against a served coordinator (``python -m pockettune coordinator``) on
127.0.0.1, once with SQLite and once with PostgreSQL.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

import pytest
import requests

from coordinator_harness import (ADMIN_TOKEN, CAPABILITIES, ENROLLMENT_KEY, artifact_cache,  # noqa: F401
                                 assert_error, backend, cleanup_jobs, count_rows, query, register, server, set_last_seen)


def test_health_and_flask_errors_are_json(server):
    health = requests.get(server.base_url + "/api/v1/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["database"] == server.database.backend
    assert_error(requests.get(server.base_url + "/api/v1/no-such-thing", timeout=10), 404, "not_found")
    wrong_method = requests.put(server.base_url + "/api/v1/devices", timeout=10)
    assert_error(wrong_method, 405, "method_not_allowed")
    assert "POST" in wrong_method.headers["Allow"]
    too_big = requests.post(server.base_url + "/api/v1/devices", data=b"x" * (2 * 2**20),
                            headers={"Content-Type": "application/json"}, timeout=30)
    assert_error(too_big, 413, "payload_too_large")


def test_registration_returns_id_and_token_stored_only_hashed(server):
    device_id, device = register(server, name="pixel-7", battery=81.5, charging=False)
    other_id, other = register(server, name="pixel-8")
    assert device_id != other_id and device.token != other.token and len(device.token) >= 40
    [(stored_digest, name, capabilities)] = query(
        server.database, "SELECT token_sha256, name, capabilities FROM devices WHERE id = :id", id=device_id)
    assert stored_digest == hashlib.sha256(device.token.encode()).hexdigest()
    everything = query(server.database, "SELECT * FROM devices WHERE id = :id", id=device_id)
    assert device.token not in repr(everything), "the bearer token itself must not be stored"
    assert name == "pixel-7"

    listed = {d["device_id"]: d for d in server.admin().get("/api/v1/devices").json()["devices"]}
    me = listed[device_id]
    assert me["capabilities"] == CAPABILITIES and me["platform"] == "android-14"
    assert me["battery"] == 81.5 and me["charging"] is False and me["online"] is True


def test_heartbeat_updates_capabilities_battery_and_last_seen(server):
    device_id, device = register(server, name="heartbeat")
    admin = server.admin()
    # A device not heard from for longer than --offline-after is offline...
    set_last_seen(server.database, device_id, datetime(2001, 1, 1, tzinfo=timezone.utc))
    assert admin.get(f"/api/v1/devices/{device_id}").json()["online"] is False
    # ... and a heartbeat brings it back, with what it reports.
    beat = device.post("/api/v1/devices/heartbeat", json={"battery": 42, "charging": True,
                                                          "capabilities": {"gflops": 30.0}})
    assert beat.status_code == 200, beat.text
    assert beat.json()["online"] is True and beat.json()["device_id"] == device_id
    me = admin.get(f"/api/v1/devices/{device_id}").json()
    assert me["online"] is True and me["battery"] == 42 and me["charging"] is True
    assert me["capabilities"] == {**CAPABILITIES, "gflops": 30.0}
    assert me["last_seen"] == beat.json()["last_seen"]
    empty = device.post("/api/v1/devices/heartbeat")
    assert empty.status_code == 200, empty.text
    bad = device.post("/api/v1/devices/heartbeat", json={"battery": "full"})
    assert_error(bad, 422, "invalid_field")
    assert_error(admin.get("/api/v1/devices/99999999"), 404, "not_found")


_DROP = object()
_GOOD_REGISTRATION = {"enrollment_key": ENROLLMENT_KEY, "name": "n", "platform": "android-14",
                      "capabilities": CAPABILITIES}


def _registration(**changes) -> dict:
    body = dict(_GOOD_REGISTRATION)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


@pytest.mark.parametrize("body, status, code", [
    (_registration(enrollment_key="wrong"), 401, "unauthorized"),
    (_registration(enrollment_key=None), 401, "unauthorized"),
    (_registration(enrollment_key=_DROP), 401, "unauthorized"),
    (_registration(capabilities=_DROP), 422, "invalid_field"),
    (_registration(capabilities={**CAPABILITIES, "ram_mb": "lots"}), 422, "invalid_field"),
    (_registration(capabilities={k: v for k, v in CAPABILITIES.items() if k != "cores"}), 422, "invalid_field"),
    (_registration(capabilities={**CAPABILITIES, "runtimes": "executorch"}), 422, "invalid_field"),
    (_registration(capabilities={**CAPABILITIES, "gpu": "adreno"}), 422, "invalid_field"),
    (_registration(battery=150), 422, "invalid_field"),
    (_registration(charging="yes"), 422, "invalid_field"),
    (_registration(name=""), 422, "invalid_field"),
    (_registration(platform=_DROP), 422, "invalid_field"),
    (_registration(colour="blue"), 422, "invalid_field"),
], ids=["wrong-key", "null-key", "no-key", "no-capabilities", "ram-not-int", "no-cores", "runtimes-not-list",
        "unknown-capability", "battery-150", "charging-not-bool", "empty-name", "no-platform", "unknown-field"])
def test_bad_registration_is_refused_and_stores_nothing(server, body, status, code):
    before = count_rows(server.database)["devices"]
    assert_error(requests.post(server.base_url + "/api/v1/devices", json=body, timeout=10), status, code)
    assert count_rows(server.database)["devices"] == before


def test_registration_body_must_be_json(server):
    response = requests.post(server.base_url + "/api/v1/devices", data=b"{not json",
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert_error(response, 400, "invalid_json")


def test_missing_or_wrong_token_is_401_and_wrong_role_is_403(server):
    _, device = register(server, name="roles")
    url = server.base_url
    for method, path in [("GET", "/api/v1/tasks/next"), ("POST", "/api/v1/devices/heartbeat"),
                         ("GET", "/api/v1/jobs"), ("GET", "/api/v1/devices"), ("POST", "/api/v1/tasks/1/result"),
                         ("GET", "/api/v1/blobs/" + "0" * 64)]:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                        {"Authorization": "Bearer "}):
            response = requests.request(method, url + path, headers=headers, timeout=10)
            assert_error(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # A device token on admin endpoints, the admin token on device endpoints: 403.
    assert_error(device.get("/api/v1/jobs"), 403, "forbidden")
    assert_error(device.get("/api/v1/devices"), 403, "forbidden")
    assert_error(device.post("/api/v1/jobs", json={}), 403, "forbidden")
    assert_error(server.admin().get("/api/v1/tasks/next"), 403, "forbidden")


@pytest.mark.parametrize("fields, snippet", [
    ({"model": "gpt-17"}, "unknown model"),
    ({"rounds": 0}, "rounds"),
    ({"rounds": True}, "rounds"),
    ({"devices_per_round": 2, "min_updates": 3}, "min_updates"),
    ({"strategy": "no-such-strategy"}, "unknown strategy"),
    ({"lr": -1}, "lr"),
    ({"round_deadline_s": 0}, "round_deadline_s"),
    ({"tier": {"lora_rank": 0}}, "LoRA rank"),
    ({"tier": {"bogus": 1}}, "tier"),
    ({"tier": {"train": {"lr": 0.1}}}, "job fields"),
    ({"colour": "blue"}, "the job has unknown fields"),
    ({"task": ""}, "task"),
    ({"configurator": "oracle"}, "unknown configurator"),
    ({"configurator": "fedspine", "configurator_options": {"ranks": [0]}}, "configurator_options"),
    ({"configurator": "legend", "configurator_options": {"fastest": True}}, "configurator_options"),
    ({"configurator": "fedspine", "configurator_options": [0.5]}, "JSON object"),
    ({"configurator": "fedspine", "configurator_options": {"prune_refresh_rounds": 0}}, "configurator_options"),
    ({"configurator": "fedspine", "configurator_options": {"tuned_pruning": "yes"}}, "configurator_options"),
    ({"tier": {"prune_ratio": 0.5, "prune_importance_adapter": "ab" * 32}}, "set by the coordinator"),
    ({"prepare_tiers": "sometimes"}, "prepare_tiers"),
])
def test_bad_job_is_422_and_creates_nothing(server, fields, snippet):
    body = {"model": "tiny", "task": "bbcnews", "rounds": 1, **fields}
    before = count_rows(server.database)["jobs"]
    error = assert_error(server.admin().post("/api/v1/jobs", json=body), 422, "invalid_field")
    assert snippet in error["error"]["message"], error
    assert count_rows(server.database)["jobs"] == before


def test_job_lifecycle_list_and_cancel(server, cleanup_jobs):
    admin = server.admin()
    created = admin.create_job(rounds=3, devices_per_round=2, min_updates=1)
    cleanup_jobs.append(created["job_id"])
    assert created["status"] in ("preparing", "running") and created["rounds"] == 3
    job = admin.wait_job(created["job_id"], lambda j: j["status"] == "running")
    assert job["current_round"] == 1 and job["latest_adapter_round"] == 0
    assert job["artifact"]["format"] == "executorch" and len(job["artifact"]["sha256"]) == 64
    assert [r["status"] for r in job["round_history"]] == ["open"]
    assert job["tier"]["train"]["lr"] == 0.5 and job["tier"]["train"]["local_steps"] == 20
    assert created["job_id"] in [j["job_id"] for j in admin.get("/api/v1/jobs").json()["jobs"]]
    assert_error(admin.get("/api/v1/jobs/99999999"), 404, "not_found")
    assert_error(admin.get(f"/api/v1/jobs/{created['job_id']}/adapter", params={"round": 1}), 404, "not_found")
    assert_error(admin.get(f"/api/v1/jobs/{created['job_id']}/adapter", params={"round": "x"}), 400,
                 "bad_request")

    cancelled = admin.post(f"/api/v1/jobs/{created['job_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert [r["status"] for r in cancelled.json()["round_history"]] == ["cancelled"]
    assert_error(admin.post(f"/api/v1/jobs/{created['job_id']}/cancel"), 409, "job_not_running")


def test_job_whose_artifact_cannot_be_built_fails_with_the_reason(server, cleanup_jobs):
    admin = server.admin()
    created = admin.create_job(tier={"lora_rank": 4, "lora_layers": 5, "batch": 2, "seq": 32})
    cleanup_jobs.append(created["job_id"])
    deadline_job = None
    for _ in range(600):
        deadline_job = admin.job(created["job_id"])
        if deadline_job["status"] != "preparing":
            break
        time.sleep(0.1)
    assert deadline_job["status"] == "failed", deadline_job
    assert "5 LoRA layers" in deadline_job["error"] and "4 layers" in deadline_job["error"], deadline_job["error"]
