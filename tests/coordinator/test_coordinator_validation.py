"""Every way an upload can be rejected: the right status and code, and nothing changes.

"Nothing changes" is checked the strict way: the row count of every table, the set of blob
files and the staging directory are the same before and after each rejected request.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    DEVICE_METRICS, FakeTrainer, artifact_cache, assert_error, backend, cleanup_jobs,
    count_rows, manifest_of, meta, register, rejection_log, safetensors_bytes, server,
    start_adapter, upload)


def _with(tensors, **changes):
    out = dict(tensors)
    for key, value in changes.items():
        out[key] = value
    return out


def _header_bytes(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def rejection_cases(good: dict[str, np.ndarray], names: list[str]):
    """(id, update bytes or tensors, meta, expected status, expected code, meta as a file part?)."""
    first, second = names[0], names[1]
    ok_meta = meta()
    huge = np.zeros((128, 64), dtype=np.float32)  # 32 KiB: more than a whole update of this job may be
    yield "meta-not-json", good, "{num_examples: 3", 400, "invalid_json"
    yield "meta-not-object", good, "[1, 2]", 422, "invalid_field"
    yield "meta-missing-field", good, {k: v for k, v in ok_meta.items() if k != "loss_after"}, 422, "invalid_field"
    yield "meta-unknown-field", good, {**ok_meta, "accuracy": 0.9}, 422, "invalid_field"
    yield "meta-zero-examples", good, {**ok_meta, "num_examples": 0}, 422, "invalid_field"
    yield "meta-examples-not-int", good, {**ok_meta, "num_examples": 3.5}, 422, "invalid_field"
    yield "meta-nan-loss", good, json.dumps(ok_meta).replace("2.1", "NaN"), 400, "invalid_json"
    yield "meta-negative-seconds", good, {**ok_meta, "train_seconds": -1}, 422, "invalid_field"
    yield "metrics-not-object", good, {**ok_meta, "metrics": [5]}, 422, "invalid_field"
    yield "metrics-unknown-key", good, {**ok_meta, "metrics": {**DEVICE_METRICS, "battery_drain": 3}}, 422, \
        "invalid_field"
    yield "metrics-zero-steps", good, {**ok_meta, "metrics": {**DEVICE_METRICS, "steps": 0}}, 422, "invalid_field"
    yield "metrics-zero-peak", good, {**ok_meta, "metrics": {"peak_gflops": 0.0}}, 422, "invalid_field"
    yield "metrics-speedup", good, {**ok_meta, "metrics": {"slowdown": 0.5}}, 422, "invalid_field"
    yield "metrics-string", good, {**ok_meta, "metrics": {"peak_rss_mb": "812"}}, 422, "invalid_field"
    yield "metrics-infinite", good, json.dumps({**ok_meta, "metrics": {"compute_seconds": 1.5}}).replace(
        "1.5", "1e999"), 422, "invalid_field"
    yield "not-safetensors", b"PK\x03\x04 this is a zip, not safetensors", ok_meta, 400, "malformed_update"
    yield "truncated", safetensors_bytes(good)[:-7], ok_meta, 400, "malformed_update"
    yield "header-length-lies", struct.pack("<Q", 10**6) + b"{}", ok_meta, 400, "malformed_update"
    yield ("overlapping-offsets",
           _header_bytes({first: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                          second: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
           ok_meta, 400, "malformed_update")
    yield "missing-tensor", {k: v for k, v in good.items() if k != first}, ok_meta, 422, "tensor_names"
    yield "unexpected-tensor", _with(good, **{"base_model.model.extra.lora_A.weight": good[first]}), ok_meta, \
        422, "tensor_names"
    yield "renamed-tensor", {(k + ".x" if k == first else k): v for k, v in good.items()}, ok_meta, 422, \
        "tensor_names"
    yield "float16", _with(good, **{first: good[first].astype(np.float16)}), ok_meta, 422, "tensor_dtype"
    yield "float64", _with(good, **{first: good[first].astype(np.float64)}), ok_meta, 422, "tensor_dtype"
    yield "transposed", _with(good, **{first: np.ascontiguousarray(good[first].T)}), ok_meta, 422, "tensor_shape"
    yield "one-row-short", _with(good, **{first: good[first][:-1]}), ok_meta, 422, "tensor_shape"
    nan = good[first].copy()
    nan[0, 0] = np.nan
    yield "nan", _with(good, **{first: nan}), ok_meta, 422, "non_finite"
    inf = good[second].copy()
    inf[-1, -1] = np.inf
    yield "inf", _with(good, **{second: inf}), ok_meta, 422, "non_finite"
    yield "norm-over-bound", _with(good, **{first: good[first] + 10.0}), ok_meta, 422, "norm_exceeded"
    yield "update-too-large", _with(good, **{"padding": huge}), ok_meta, 413, "update_too_large"


def test_every_rejection_has_its_code_and_changes_nothing(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=2, min_updates=2, max_update_norm=5.0)
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, name="validator")
    task = device.get("/api/v1/tasks/next").json()
    manifest = manifest_of(device, task)
    names = [t["name"] for t in manifest["lora"]["tensors"]]
    good = FakeTrainer(manifest).update(start_adapter(admin, job["job_id"], 0), seed=5)

    def snapshot():
        return count_rows(server.database), server.blob_files(), server.staging_files()

    before = snapshot()
    seen_codes, answered = set(), []
    for case_id, update, meta_body, status, code in rejection_cases(good, names):
        for meta_as_file in (False, True):
            response = upload(device, task, update, meta_body, meta_as_file=meta_as_file)
            assert response.status_code == status, (case_id, meta_as_file, response.text)
            assert_error(response, status, code)
            assert snapshot() == before, f"{case_id}: a rejected upload changed the database or the blob store"
            answered.append(code)
        seen_codes.add(code)
    # Every refusal is logged for operators, with the code the device was answered with.
    assert rejection_log(server.database, task["task_id"]) == answered

    # Requests that are not even a proper upload.
    url = task["upload"]["url"]
    assert_error(device.post(url, data={"meta": json.dumps(meta())}), 400, "missing_part")
    assert_error(device.post(url, files={"update": ("u", safetensors_bytes(good))}), 400, "missing_part")
    assert_error(device.post(url, json=meta()), 400, "missing_part")
    too_big = device.post(url, files={"update": ("u", b"\0" * (2 * 2**20 - 1000))}, data={"meta": "{}"})
    assert_error(too_big, 413, "payload_too_large")
    assert snapshot() == before

    accepted = upload(device, task, good, meta())
    assert accepted.status_code == 201, accepted.text
    after_accept = snapshot()
    assert after_accept[0]["updates"] == before[0]["updates"] + 1
    assert len(after_accept[1]) == len(before[1]) + 1
    assert_error(upload(device, task, good, meta()), 409, "already_submitted")
    assert snapshot() == after_accept
    assert seen_codes == {"invalid_json", "invalid_field", "malformed_update", "tensor_names", "tensor_dtype",
                          "tensor_shape", "non_finite", "norm_exceeded", "update_too_large"}


def test_result_for_a_closed_round_is_409_and_changes_nothing(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=2, min_updates=1)
    cleanup_jobs.append(job["job_id"])
    devices = [register(server, name=f"closed-{i}")[1] for i in range(2)]
    tasks = [d.get("/api/v1/tasks/next").json() for d in devices]
    manifest = manifest_of(devices[0], tasks[0])
    trainer = FakeTrainer(manifest)
    start = start_adapter(admin, job["job_id"], 0)
    first = upload(devices[0], tasks[0], trainer.update(start, seed=1), meta())
    assert first.status_code == 201 and first.json()["round_status"] == "closed"
    before = count_rows(server.database), server.blob_files()
    assert_error(upload(devices[1], tasks[1], trainer.update(start, seed=2), meta()), 409, "round_closed")
    assert (count_rows(server.database), server.blob_files()) == before
