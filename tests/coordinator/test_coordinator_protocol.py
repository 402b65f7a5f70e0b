"""tests/protocol/*.json: every example is what the served coordinator accepts and answers.

The comparison ("same shape") is described in tests/protocol/README.md.
"""

from __future__ import annotations

import json

import pytest
import requests

from coordinator_harness import (ENROLLMENT_KEY, PROTOCOL_DIR, FakeTrainer, artifact_cache, backend,  # noqa: F401
                                 cleanup_jobs, manifest_of, server, start_adapter, upload)

CHECKED = set()


def example(name: str):
    CHECKED.add(name)
    return json.loads((PROTOCOL_DIR / name).read_text())


def shape_errors(actual, expected, path="$") -> list[str]:
    """Where ``actual`` does not have the shape of ``expected`` (empty: same shape)."""
    if expected is None:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {json.dumps(actual)[:80]}"]
        errors = []
        if set(actual) != set(expected):
            errors.append(f"{path}: keys differ: missing {sorted(set(expected) - set(actual))}, "
                          f"extra {sorted(set(actual) - set(expected))}")
        for key in set(actual) & set(expected):
            errors += shape_errors(actual[key], expected[key], f"{path}.{key}")
        return errors
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected an array, got {json.dumps(actual)[:80]}"]
        if not expected:
            return []
        errors = []
        for i, item in enumerate(actual):
            candidates = [shape_errors(item, option, f"{path}[{i}]") for option in expected]
            if all(candidates):
                errors += min(candidates, key=len)
        return errors
    if isinstance(expected, bool):
        return [] if isinstance(actual, bool) else [f"{path}: expected a boolean, got {actual!r}"]
    if isinstance(expected, int):
        ok = isinstance(actual, int) and not isinstance(actual, bool)
        return [] if ok else [f"{path}: expected an integer, got {actual!r}"]
    if isinstance(expected, float):
        ok = isinstance(actual, (int, float)) and not isinstance(actual, bool)
        return [] if ok else [f"{path}: expected a number, got {actual!r}"]
    if isinstance(expected, str):
        return [] if isinstance(actual, str) else [f"{path}: expected a string, got {actual!r}"]
    raise TypeError(f"unexpected JSON value in an example: {expected!r}")


def as_sent(meta: dict, task: dict) -> dict:
    """A meta example as a device sends it for ``task``: naming the adapter that task started from."""
    return {**meta, "start_adapter_sha256": task["adapter"]["sha256"]}


def assert_shape(actual, name: str) -> None:
    errors = shape_errors(actual, example(name))
    assert not errors, f"{name} does not describe the server's answer:\n" + "\n".join(errors)


def test_shape_comparison_itself():
    assert shape_errors({"a": 1, "b": [1.5]}, {"a": 2, "b": [2.0]}) == []
    assert shape_errors({"a": 1.5}, {"a": 2}) and shape_errors({"a": True}, {"a": 2})
    assert shape_errors({"a": 1}, {"a": 1, "b": 2}) and shape_errors({"a": 1, "c": 2}, {"a": 1})
    assert shape_errors({"a": None}, {"a": "x"}) and not shape_errors({"a": "x"}, {"a": None})
    assert not shape_errors([{"s": None}, {"s": {"x": 1}}], [{"s": {"x": 2}}, {"s": None}])
    assert shape_errors([{"s": {"y": 1}}], [{"s": {"x": 2}}])


def test_every_example_matches_the_served_coordinator(server, cleanup_jobs):
    base = server.base_url
    assert_shape(requests.get(base + "/api/v1/health", timeout=10).json(), "health_response.json")

    registration = dict(example("register_request.json"), enrollment_key=ENROLLMENT_KEY)
    response = requests.post(base + "/api/v1/devices", json=registration, timeout=10)
    assert response.status_code == 201, response.text
    assert_shape(response.json(), "register_response.json")
    device_id = response.json()["device_id"]
    device = server.device(response.json()["token"])

    beat = device.post("/api/v1/devices/heartbeat", json=example("heartbeat_request.json"))
    assert beat.status_code == 200, beat.text
    assert_shape(beat.json(), "heartbeat_response.json")

    admin = server.admin()
    listed = admin.get("/api/v1/devices").json()
    assert_shape({"devices": [d for d in listed["devices"] if d["device_id"] == device_id]},
                 "device_list_response.json")
    assert_shape(listed, "device_list_response.json")

    created = admin.post("/api/v1/jobs", json=example("job_create_request.json"))
    assert created.status_code == 202, created.text
    assert_shape(created.json(), "job_created_response.json")
    job_id = created.json()["job_id"]
    cleanup_jobs.append(job_id)
    # Running, with round 0 (the initial adapter) evaluated: the example shows an evaluation.
    job = admin.wait_job(job_id, lambda j: j["status"] == "running" and j["initial_evaluation"] is not None)
    assert_shape(job, "job_response.json")
    assert_shape({"jobs": [j for j in admin.get("/api/v1/jobs").json()["jobs"] if j["job_id"] == job_id]},
                 "job_list_response.json")

    task = device.get("/api/v1/tasks/next")
    assert task.status_code == 200, task.text
    task = task.json()
    assert task["job_id"] == job_id
    assert_shape(task, "task_response.json")

    tensors = FakeTrainer(manifest_of(device, task)).update(start_adapter(admin, job_id, 0), seed=9)
    result = upload(device, task, tensors, as_sent(example("result_meta.json"), task))
    assert result.status_code == 201, result.text
    assert_shape(result.json(), "result_response.json")
    assert result.json()["round_status"] == "closed"

    job = admin.job(job_id)  # round 1 closed, round 2 open: both kinds of round_history entry
    assert [r["status"] for r in job["round_history"]] == ["closed", "open"]
    assert_shape(job, "job_response.json")

    generated = admin.post(f"/api/v1/jobs/{job_id}/generate", json=example("generate_request.json"))
    assert generated.status_code == 200, generated.text
    assert_shape(generated.json(), "generate_response.json")
    assert generated.json()["round"] == 1 and len(generated.json()["token_ids"]) <= 8

    # Round 2 with the device's hardware metrics, then the round as GET /jobs/<id>/rounds/<n> shows it.
    task = device.get("/api/v1/tasks/next").json()
    assert task["round"] == 2
    tensors = FakeTrainer(manifest_of(device, task)).update(start_adapter(admin, job_id, 1), seed=10)
    with_metrics = example("result_meta_with_metrics.json")
    result = upload(device, task, tensors, as_sent(with_metrics, task))
    assert result.status_code == 201, result.text
    admin.wait_job(job_id, lambda j: j["round_history"][1]["evaluation"] is not None)
    detail = admin.get(f"/api/v1/jobs/{job_id}/rounds/2")
    assert detail.status_code == 200, detail.text
    assert_shape(detail.json(), "round_response.json")
    assert detail.json()["tasks"][0]["update"]["metrics"] == with_metrics["metrics"]
    cancelled = admin.post(f"/api/v1/jobs/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["current_round"] is None
    # A job that is over has no current round: job_list_response.json shows both kinds of job.
    assert_shape({"jobs": [cancelled]}, "job_list_response.json")

    error = requests.get(base + "/api/v1/tasks/next", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert error.status_code == 401
    assert_shape(error.json(), "error_response.json")


def test_onnxruntime_task_example(server, cleanup_jobs):
    """A device with only ONNX Runtime gets the job's tier compiled for it (exported on demand)."""
    import time

    from coordinator_harness import CAPABILITIES, JOB_TIER, register

    admin = server.admin()
    job = admin.running_job(tier={**JOB_TIER, "train": {"optimizer": "adamw", "weight_decay": 0.01}}, lr=0.002,
                            devices_per_round=1, min_updates=1)
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, "ort-phone", capabilities={**CAPABILITIES, "runtimes": ["onnxruntime"],
                                                            "optimizers": ["sgd", "adamw"]})
    deadline = time.monotonic() + 120
    while (answer := device.get("/api/v1/tasks/next")).status_code == 204:   # the export is under way
        assert time.monotonic() < deadline, "no onnxruntime task within 120 s"
        time.sleep(0.5)
    assert answer.status_code == 200, answer.text
    task = answer.json()
    assert task["job_id"] == job["job_id"]
    assert_shape(task, "task_response_onnxruntime.json")
    assert task["artifact"]["format"] == "onnxruntime" and task["adapter"]["format"] == "safetensors"
    assert {"training_model.onnx", "optimizer_model.onnx", "checkpoint"} <= {f["path"] for f in task["artifact"]["files"]}
    manifest = manifest_of(device, task)
    assert manifest["program"]["optimizer"]["optimizer"] == "adamw"
    # The start adapter is the job's global adapter, and an update in its names is accepted.
    start = start_adapter(admin, job["job_id"], 0)
    shipped = device.get(task["adapter"]["url"])
    from safetensors.numpy import load

    assert {k: v.tolist() for k, v in load(shipped.content).items()} == {k: v.tolist() for k, v in start.items()}
    result = upload(device, task, FakeTrainer(manifest).update(start, seed=4), as_sent(example("result_meta.json"), task))
    assert result.status_code == 201, result.text


def test_onnxruntime_device_is_told_why_a_momentum_job_has_no_task(server, cleanup_jobs):
    """ONNX Runtime's SGD has no momentum: no export is ordered, the device hears why."""
    from coordinator.api.tasks import NO_TASK_HEADER
    from coordinator_harness import CAPABILITIES, JOB_TIER, register

    admin = server.admin()
    job = admin.running_job(tier={**JOB_TIER, "train": {"momentum": 0.5}}, devices_per_round=1, min_updates=1)
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, "ort-only", capabilities={**CAPABILITIES, "runtimes": ["onnxruntime"]})
    answer = device.get("/api/v1/tasks/next")
    assert answer.status_code == 204
    assert "no momentum or weight decay" in answer.headers[NO_TASK_HEADER]


def test_error_codes_example_lists_every_code_the_server_has():
    from coordinator.errors import ERROR_CODES

    assert example("error_codes.json") == ERROR_CODES


#: tests/protocol files that are not API messages (the shared tokenizer vectors are checked by tests/android/).
NOT_MESSAGES = {"tokenizer_vectors.json", "update_clipping.json"}


def test_every_example_file_is_checked():
    """Runs last in this module: a new example file must get a check above."""
    files = {p.name for p in PROTOCOL_DIR.glob("*.json")} - NOT_MESSAGES
    if not CHECKED:
        pytest.skip("the checks above did not run (e.g. -k selected this test alone)")
    assert files == CHECKED, f"unchecked: {sorted(files - CHECKED)}; missing: {sorted(CHECKED - files)}"
