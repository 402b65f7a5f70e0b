"""Split jobs over real HTTP: a real coordinator process, two devices running the real bottom
programs on the ExecuTorch runtime (fleet/split_worker.py), the top in the coordinator.

The job runs on a conducted clock (the admin sets virtual time), so deadlines pass exactly when
the test says. Hostile requests (wrong shapes, NaN, a step the device is not in, a late step,
an adapter with the wrong keys) get a clear 4xx and leave the job's state as it was.
"""

from __future__ import annotations

import time

import pytest
import requests
import torch
from safetensors.torch import save

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    artifact_cache, assert_error, register, shared_server)
from fleet.split_worker import SplitWorker
from fleet.transport import CoordinatorClient

SPEC = {"model": "tiny", "split_layer": 1, "rank": 4, "seq": 16, "batch_sizes": [1, 2], "target_batch": 3,
        "steps": 4, "average_every": 2, "step_deadline_s": 30, "mode": "mergesfl", "lr": 0.1, "top_lr": 0.1,
        "clock": "conducted", "kernels": "portable"}


@pytest.fixture(scope="module")
def server(request, tmp_path_factory, artifact_cache):
    """Split jobs keep no database rows: one backend is enough."""
    return shared_server("sqlite", request, tmp_path_factory, artifact_cache)


def examples(count: int, offset: int):
    from models.batching import encode_example
    from models.corpora import bbc_news
    from models.registry import load_base_model

    tokenizer = load_base_model("tiny").tokenizer
    return [encode_example(tokenizer, d.text, SPEC["seq"]) for d in bbc_news("train")[offset:offset + count]]


def create(admin, **overrides) -> dict:
    response = admin.post("/api/v1/split-jobs", json={**SPEC, **overrides})
    assert response.status_code == 202, response.text
    job_id = response.json()["split_job_id"]
    deadline = time.monotonic() + 300
    while True:
        job = admin.get(f"/api/v1/split-jobs/{job_id}").json()
        if job["status"] != "preparing" or time.monotonic() > deadline:
            assert job["status"] == "running", job
            return job
        time.sleep(0.2)


def workers(server, job_id, tmp_path, count=2):
    out = []
    for index in range(count):
        device_id, api = register(server, name=f"split-{index}")
        client = CoordinatorClient(server.base_url, api.token)
        worker = SplitWorker(client, job_id, examples(6, 6 * index), tmp_path / f"device{index}")
        worker.device_id = device_id
        out.append((api, worker))
    return out


def drive(pairs, limit=200):
    """Ask each device's next action in turn and carry it out, until every one is done."""
    done = set()
    for _ in range(limit):
        for index, (_, worker) in enumerate(pairs):
            if index in done:
                continue
            action = worker.client.json("GET", worker._path("next"))
            if action["kind"] == "done":
                done.add(index)
            elif action["kind"] != "wait":
                worker.act(action)
        if len(done) == len(pairs):
            return
    raise AssertionError("the split job did not finish")


def test_a_split_job_runs_to_the_end_over_http(server, tmp_path):
    admin = server.admin()
    job = create(admin)
    pairs = workers(server, job["split_job_id"], tmp_path)
    for _, worker in pairs:
        worker.join()
    drive(pairs)
    progress = admin.get(f"/api/v1/split-jobs/{job['split_job_id']}").json()["progress"]
    assert progress["done"] and progress["steps_run"] == 4 and progress["averagings"] == 2
    assert all(stats["steps"] >= 1 and stats["bytes_up"] > 0 for stats in progress["per_worker"].values())
    reports = [worker.report for _, worker in pairs]
    assert sum(r.steps for r in reports) >= 4 and all(r.averagings == 2 for r in reports)
    first, second = (worker._trainers[worker._active].adapter_tensors() for _, worker in pairs)
    assert all(torch.equal(first[key], second[key]) for key in first)        # both hold the final average
    start = pairs[0][1]._trainers[pairs[0][1]._active]._start
    assert any(not torch.equal(first[key], start[key]) for key in first)     # and it moved

    # The dashboard shows the job: what the server sees, step rate, label mix, batch sizes per device.
    page = requests.get(f"{server.base_url}/split-jobs/{job['split_job_id']}", timeout=60)
    assert page.status_code == 200, page.text[:500]
    for element in ('id="split-privacy"', 'id="split-step-rate"', 'id="split-label-mix"', 'id="chart-split-batches"',
                    'id="split-devices"'):
        assert element in page.text, element
    assert page.text.count("<tr data-step=") == 4      # (its clock never moved: no step rate yet)
    listing = requests.get(f"{server.base_url}/split-jobs", timeout=60)
    assert listing.status_code == 200 and f'data-split-job="{job["split_job_id"]}"' in listing.text

    # Stopped: the model and the progress stay, the top is let go, devices are told so.
    from safetensors.torch import load

    before = load(admin.get(f"/api/v1/split-jobs/{job['split_job_id']}/adapter").content)
    stopped = admin.post(f"/api/v1/split-jobs/{job['split_job_id']}/stop", json={})
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped", stopped.text
    assert stopped.json()["progress"]["steps_run"] == 4
    after = load(admin.get(f"/api/v1/split-jobs/{job['split_job_id']}/adapter").content)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    device_client = pairs[0][1].client
    refused = device_client.request("GET", f"api/v1/split-jobs/{job['split_job_id']}/next", ok=(409,))
    assert refused.json()["error"]["code"] == "job_not_running"
    again = admin.post(f"/api/v1/split-jobs/{job['split_job_id']}/stop", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_running"
    assert requests.get(f"{server.base_url}/split-jobs/{job['split_job_id']}", timeout=60).status_code == 200


def test_bad_split_requests_are_refused_and_change_nothing(server, tmp_path):
    admin = server.admin()
    job = create(admin, steps=2, average_every=2)
    job_id = job["split_job_id"]
    (api_a, a), (api_b, b) = workers(server, job_id, tmp_path)
    a.join()
    b.join()
    action = a.client.json("GET", a._path("next"))
    assert action["kind"] == "features"
    size, step = action["batch_size"], action["step"]
    seq, hidden = SPEC["seq"], a.manifest["hidden"]
    labels = torch.zeros(size, seq, dtype=torch.long)
    before = admin.get(f"/api/v1/split-jobs/{job_id}").json()
    path = f"/api/v1/split-jobs/{job_id}/steps/{step}/features"
    octet = {"Content-Type": "application/octet-stream"}
    for features, code, status in [(torch.zeros(size, seq, hidden + 1), "bad_features", 422),
                                   (torch.full((size, seq, hidden), float("nan")), "bad_features", 422)]:
        assert_error(api_a.post(path, data=save({"features": features, "labels": labels}), headers=octet), status, code)
    assert_error(api_a.post(path, data=b"not safetensors", headers=octet), 400, "bad_request")
    assert_error(api_a.post(path, data=save({"features": torch.zeros(size, seq, hidden)}), headers=octet),
                 422, "tensor_names")
    assert_error(api_a.post(path, data=save({"features": torch.zeros(size, seq, hidden),
                                             "labels": torch.full((size, seq), 10 ** 6)}), headers=octet),
                 422, "bad_labels")
    assert_error(api_a.get(f"/api/v1/split-jobs/{job_id}/steps/{step}/gradient"), 409, "step_not_ready")
    assert_error(api_a.post(f"/api/v1/split-jobs/{job_id}/averagings/1/adapter",
                            data=save({"x": torch.zeros(1)}), headers=octet), 422, "tensor_names")
    _, stranger = register(server, name="stranger")
    assert_error(stranger.get(f"/api/v1/split-jobs/{job_id}/next"), 403, "not_joined")
    assert_error(stranger.get(f"/api/v1/split-jobs/{job_id}/steps/{step}/gradient"), 403, "not_joined")
    assert admin.get(f"/api/v1/split-jobs/{job_id}").json() == before

    # A late step: the conductor moves the clock past the deadline after only b has sent.
    b.act(b.client.json("GET", b._path("next")))
    assert admin.post(f"/api/v1/split-jobs/{job_id}/clock", json={"now": 31}).status_code == 200
    late = save({"features": torch.zeros(size, seq, hidden), "labels": labels})
    assert_error(api_a.post(path, data=late, headers=octet), 409, "no_such_step")
    progress = admin.get(f"/api/v1/split-jobs/{job_id}").json()["progress"]
    assert progress["steps_run"] == 1
    assert progress["last_step"]["merged"] == [str(b.device_id)]
    assert progress["last_step"]["dropped"] == [str(a.device_id)]
    assert_error(api_a.get(f"/api/v1/split-jobs/{job_id}/steps/{step}/gradient"), 409, "dropped")
    assert_error(admin.post(f"/api/v1/split-jobs/{job_id}/clock", json={"now": 1}), 422, "invalid_field")


def test_a_split_spec_is_checked(server):
    admin = server.admin()
    for body, field in [({**SPEC, "split_layer": 0}, "split_layer"), ({**SPEC, "batch_sizes": [2, 2]}, "batch_sizes"),
                        ({**SPEC, "mode": "magic"}, "mode"), ({**SPEC, "surprise": 1}, "surprise")]:
        response = admin.post("/api/v1/split-jobs", json=body)
        assert response.status_code in (400, 422) and field in response.text, response.text
    before = admin.get("/api/v1/split-jobs").json()
    response = admin.post("/api/v1/split-jobs", json={**SPEC, "split_layer": 99})
    assert response.status_code == 202
    job_id = response.json()["split_job_id"]
    for _ in range(300):
        job = admin.get(f"/api/v1/split-jobs/{job_id}").json()
        if job["status"] != "preparing":
            break
        time.sleep(0.2)
    assert job["status"] == "failed" and "split_layer" in job["error"]
    assert len(admin.get("/api/v1/split-jobs").json()["split_jobs"]) == len(before["split_jobs"]) + 1


def conducted_run(server, tmp_path, mode: str) -> tuple[dict, object]:
    """A split job on the virtual clock: three devices, one 30x slower, no link latency."""
    from fleet.profiles import DeviceProfile
    from fleet.split_cost import ModelShape
    from fleet.split_simulator import SplitConductor, SplitDevice
    from models.registry import load_base_model

    admin = server.admin()
    job = create(admin, mode=mode, steps=6, average_every=3, batch_sizes=[1, 2, 3], target_batch=4)
    devices = []
    for (api, worker), slowdown in zip(workers(server, job["split_job_id"], tmp_path / mode, count=3), (1, 1, 30)):
        devices.append(SplitDevice(worker=worker, name=str(worker.device_id),
                                   profile=DeviceProfile(name=f"x{slowdown}", slowdown=slowdown, latency_s=0.0,
                                                         bandwidth_mbps=1000.0)))
    conductor = SplitConductor(CoordinatorClient(server.base_url, admin.token), job["split_job_id"], devices,
                               ModelShape.of(load_base_model("tiny").config), split_layer=SPEC["split_layer"],
                               seq=SPEC["seq"], rank=SPEC["rank"])
    trace = conductor.run()
    return admin.get(f"/api/v1/split-jobs/{job['split_job_id']}").json(), trace


def test_regulated_batch_sizes_cut_idle_time_on_the_virtual_clock(server, tmp_path):
    plain_job, plain = conducted_run(server, tmp_path, "plain")
    merged_job, merged = conducted_run(server, tmp_path, "mergesfl")
    for job, trace in ((plain_job, plain), (merged_job, merged)):
        assert job["progress"]["done"] and len(trace.steps) == 6
        times = [t for step in trace.steps for t in (step.opened_at, step.closed_at)]
        assert times == sorted(times)
    # Plain: equal sizes, every step waits for the slow device. MergeSFL, once it has measured
    # the devices, gives the slow one less (or nothing) and the steps stop waiting for it.
    assert len({size for step in plain.steps for size in step.planned.values()}) == 1
    slow = next(name for name, d in merged_job["progress"]["per_worker"].items()
                if d["speed"] is not None and d["speed"] == min(
                    v["speed"] for v in merged_job["progress"]["per_worker"].values() if v["speed"] is not None))
    later = merged.steps[-1]
    assert later.planned.get(slow, 0) < max(later.planned.values())
    assert merged.idle_seconds < plain.idle_seconds
    page = requests.get(f"{server.base_url}/split-jobs/{merged_job['split_job_id']}", timeout=60)
    assert page.status_code == 200 and "steps/s" in page.text       # on the conducted (virtual) clock
    assert merged.steps[-1].closed_at < plain.steps[-1].closed_at
