"""Jobs whose devices send compressed updates, over real HTTP on SQLite and PostgreSQL: who is
offered the job, what the task says, what arrives and what is counted, and what is refused
(changing nothing). Updates come from the harness's FakeTrainer (a fake of training only); the
codecs and the device's gzip are the real ones."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    CAPABILITIES, FakeTrainer, artifact_cache, assert_error, backend, cleanup_jobs, count_rows, fedavg_by_hand,
    manifest_of, meta, register, safetensors_bytes, server, start_adapter)
from models.update_codecs import get_codec

CODEC_CAPABILITIES = {**CAPABILITIES, "update_encodings": ["fp16", "int8", "int8_tensor", "topk"]}


def _snapshot(server):
    return count_rows(server.database), server.blob_files(), server.staging_files()


def _send(device, task, data: bytes, *, gzipped: bool = False):
    part = ("update.safetensors.gz", data, "application/gzip") if gzipped else \
        ("update.safetensors", data, "application/octet-stream")
    body = {**meta(), "start_adapter_sha256": task["adapter"]["sha256"], "bytes_uploaded": len(data)}
    return device.post(task["upload"]["url"], files={"update": part}, data={"meta": json.dumps(body)})


def _encoded(codec, trained, start) -> bytes:
    change = {k: trained[k].astype(np.float64) - start[k] for k in start}
    return safetensors_bytes({k: np.ascontiguousarray(v) for k, v in codec.encode(change).items()})


def test_an_int8_job_takes_gzip_compressed_changes_and_counts_the_bytes_on_the_wire(server, cleanup_jobs):
    from coordinator.api.tasks import NO_TASK_HEADER

    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=2, min_updates=2, update_encoding={"name": "int8"})
    cleanup_jobs.append(job["job_id"])
    assert job["update_encoding"] == {"name": "int8"}
    _, old_phone = register(server, name="fp32-only")
    answer = old_phone.get("/api/v1/tasks/next")
    if answer.status_code == 200:
        assert answer.json()["job_id"] != job["job_id"]
    else:
        assert answer.status_code == 204 and "update_encodings" in answer.headers[NO_TASK_HEADER]
    devices = [register(server, name=f"int8-{i}", capabilities=CODEC_CAPABILITIES)[1] for i in range(2)]
    tasks = [device.get("/api/v1/tasks/next").json() for device in devices]
    assert all(t["job_id"] == job["job_id"] and t["upload"]["encoding"] == {"name": "int8"} for t in tasks)
    start = start_adapter(admin, job["job_id"], 0)
    trainer = FakeTrainer(manifest_of(devices[0], tasks[0]))
    codec = get_codec({"name": "int8"})
    trained = [trainer.update(start, seed=30 + i, scale=0.01) for i in range(2)]
    files = [_encoded(codec, t, start) for t in trained]

    # Refused, changing nothing: the trained fp32 values (not the job's encoding), a scale that is
    # NaN, a part that says gzip and is not, a gzip part that inflates past any valid update.
    before = _snapshot(server)
    assert_error(_send(devices[0], tasks[0], safetensors_bytes(trained[0])), 422, "tensor_names")
    key = next(iter(start))
    arrays = codec.encode({k: trained[0][k].astype(np.float64) - start[k] for k in start})
    arrays[key + ".scale"] = np.full_like(arrays[key + ".scale"], np.nan)
    assert_error(_send(devices[0], tasks[0], safetensors_bytes(arrays)), 422, "non_finite")
    assert_error(_send(devices[0], tasks[0], files[0], gzipped=True), 400, "malformed_update")
    bomb = gzip.compress(b"\0" * (10 * 2**20))
    assert_error(_send(devices[0], tasks[0], bomb, gzipped=True), 413, "update_too_large")
    assert _snapshot(server) == before

    sent = [gzip.compress(files[0], mtime=0), files[1]]
    for device, task, data, packed in zip(devices, tasks, sent, (True, False)):
        response = _send(device, task, data, gzipped=packed)
        assert response.status_code == 201, response.text
    admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed")
    decoded = [{k: (start[k].astype(np.float64) + v).astype(np.float32)
                for k, v in codec.decode(codec.encode({k: t[k].astype(np.float64) - start[k] for k in start}),
                                         trainer.specs).items()} for t in trained]
    expected = fedavg_by_hand([(16, decoded[0]), (16, decoded[1])])
    served = start_adapter(admin, job["job_id"], 1)
    for k in expected:
        np.testing.assert_allclose(served[k], expected[k], rtol=1e-5, atol=1e-7)
    round_ = admin.get(f"/api/v1/jobs/{job['job_id']}/rounds/1").json()
    wire = sorted(t["update"]["wire_bytes"] for t in round_["tasks"] if t["update"])
    assert wire == sorted(len(d) for d in sent)
    # (the tiny tier's tensors are so small that headers dominate: the ratio at a real tier's
    # shapes is tests/test_update_codecs.py's)
    assert min(wire) < 0.3 * len(safetensors_bytes(trained[0]))


@pytest.mark.parametrize("bad, message", [
    ({"name": "gzip"}, "unknown update encoding"), ({"name": "topk", "fraction": 0}, "fraction"),
    ("int8", "must be an object"), ({"name": "int8", "bits": 4}, "takes no options")])
def test_an_encoding_that_does_not_exist_is_a_422_and_creates_nothing(server, bad, message):
    admin = server.admin()
    before = _snapshot(server)
    response = admin.post("/api/v1/jobs", json={"model": "tiny", "task": "bbcnews", "rounds": 1,
                                                "eval_examples": 0, "update_encoding": bad})
    assert message in assert_error(response, 422, "invalid_field")["error"]["message"]
    assert _snapshot(server) == before


def test_a_topk_update_naming_a_value_twice_or_outside_the_tensor_is_refused(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1,
                            update_encoding={"name": "topk", "fraction": 0.1})
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, name="topk", capabilities=CODEC_CAPABILITIES)
    task = device.get("/api/v1/tasks/next").json()
    assert task["job_id"] == job["job_id"]
    start = start_adapter(admin, job["job_id"], 0)
    codec = get_codec({"name": "topk", "fraction": 0.1})
    arrays = codec.encode({k: np.full(v.shape, 1e-3) for k, v in start.items()})
    key = next(iter(start)) + ".indices"
    before = _snapshot(server)
    for indices, why in ((np.zeros_like(arrays[key]), "twice"), (arrays[key] + 10**7, "outside")):
        response = _send(device, task, safetensors_bytes({**arrays, key: indices}))
        assert why in assert_error(response, 400, "malformed_update")["error"]["message"]
    assert _snapshot(server) == before
    assert _send(device, task, safetensors_bytes(arrays)).status_code == 201
