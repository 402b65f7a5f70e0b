"""Federated rounds over real HTTP: selection, downloads, FedAvg by hand, PEFT, deadlines, 403/404/409."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import numpy as np

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    CAPABILITIES, JOB_TIER, FakeTrainer, artifact_cache, assert_error, backend,
    cleanup_jobs, fedavg_by_hand, manifest_of, meta, query, register,
    server, start_adapter, upload)


def fetch_verified(device, ref: dict) -> bytes:
    """Download a blob reference and check its size and sha256, as a device must."""
    response = device.get(ref["url"])
    assert response.status_code == 200, response.text
    assert len(response.content) == ref["size"]
    assert hashlib.sha256(response.content).hexdigest() == ref["sha256"]
    return response.content


def test_full_job_fedavg_matches_hand_computation_and_peft_loads_it(server, cleanup_jobs, tmp_path):
    admin = server.admin()
    devices = [register(server, name=f"round-{i}")[1] for i in range(3)]
    job = admin.running_job(rounds=2, devices_per_round=3, min_updates=3, round_deadline_s=300)
    cleanup_jobs.append(job["job_id"])
    job_id = job["job_id"]
    examples = [8, 24, 40]
    expected_by_round, served_by_round = {}, {}
    for round_number in (1, 2):
        tasks = []
        for device in devices:
            response = device.get("/api/v1/tasks/next")
            assert response.status_code == 200, (response.status_code, response.headers, response.text)
            tasks.append(response.json())
        assert {t["round"] for t in tasks} == {round_number} and {t["job_id"] for t in tasks} == {job_id}
        assert len({t["task_id"] for t in tasks}) == 3
        task = tasks[0]
        assert task["train"]["steps"] == 20 and task["train"]["lr"] == 0.5
        assert task["train"]["batch"] == 2 and task["train"]["seq"] == 32 and task["dataset"] == "bbcnews"
        assert task["adapter"]["round"] == round_number - 1 and task["adapter"]["format"] == "ptd"
        # The device's downloads: the manifest, every device file, the start adapter (.ptd), all hash-checked.
        manifest = manifest_of(devices[0], task)
        assert {f["path"] for f in task["artifact"]["files"]} == {
            p for p, f in manifest["files"].items() if f["device"]}
        for ref in task["artifact"]["files"]:
            fetch_verified(devices[0], ref)
        ptd = fetch_verified(devices[0], task["adapter"])
        start = start_adapter(admin, job_id, round_number - 1)
        from export.executorch import read_adapter_ptd

        ptd_path = tmp_path / f"start-{round_number}.ptd"
        ptd_path.write_bytes(ptd)
        assert {k: v.numpy() for k, v in read_adapter_ptd(ptd_path).items()}.keys() == start.keys()
        for key, value in read_adapter_ptd(ptd_path).items():
            np.testing.assert_array_equal(value.numpy(), start[key])

        trainer = FakeTrainer(manifest)
        sent = []
        for i, (device, t) in enumerate(zip(devices, tasks)):
            tensors = trainer.update(start, seed=100 * round_number + i, scale=0.05)
            response = upload(device, t, tensors, meta(num_examples=examples[i]))
            assert response.status_code == 201, response.text
            body = response.json()
            assert body["accepted_updates"] == i + 1 and body["round"] == round_number
            assert body["round_status"] == ("closed" if i == 2 else "open")
            sent.append((examples[i], tensors))
        expected_by_round[round_number] = fedavg_by_hand(sent)

        detail = admin.job(job_id)
        closed = detail["round_history"][round_number - 1]
        assert closed["status"] == "closed" and closed["close_reason"] == "min_updates"
        assert closed["num_updates"] == 3 and closed["adapter"]["num_examples"] == sum(examples)
        aggregated = served_by_round[round_number] = start_adapter(admin, job_id, round_number)
        assert aggregated.keys() == expected_by_round[round_number].keys()
        for key, value in expected_by_round[round_number].items():
            np.testing.assert_allclose(aggregated[key], value, rtol=0, atol=1e-6)
        # the .ptd devices get next holds the same tensors
        ptd_path = tmp_path / f"global-{round_number}.ptd"
        ptd_path.write_bytes(fetch_verified(devices[0], closed["adapter"]["ptd"]))
        for key, value in read_adapter_ptd(ptd_path).items():
            np.testing.assert_array_equal(value.numpy(), aggregated[key])

    final = admin.job(job_id)
    assert final["status"] == "completed" and final["current_round"] is None
    assert [r["status"] for r in final["round_history"]] == ["closed", "closed"]
    assert devices[0].get("/api/v1/tasks/next").status_code == 204
    rows = query(server.database, "SELECT COUNT(*) FROM global_adapters WHERE job_id = :j", j=job_id)
    assert rows == [(3,)]  # rounds 0, 1, 2: each aggregated exactly once

    # The latest global adapter, as a zipped PEFT directory, loads with PeftModel.from_pretrained.
    response = admin.get(f"/api/v1/jobs/{job_id}/adapter")
    assert response.status_code == 200 and response.headers["PocketTune-Adapter-Round"] == "2"
    assert response.headers["Content-Type"] == "application/zip"
    adapter_dir = tmp_path / "adapter"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(adapter_dir)
    import torch
    from peft import PeftModel

    from models.registry import load_base_model

    base = load_base_model("tiny").model
    ids = torch.arange(3, 35).reshape(2, 16)
    with torch.no_grad():
        base_logits = base(ids).logits.clone()
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    loaded = {name: p.detach().numpy() for name, p in peft_model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(served_by_round[2])
    for key, value in served_by_round[2].items():  # bit-exact: what PEFT loads is what was served
        peft_name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        np.testing.assert_allclose(loaded[peft_name], value, rtol=0, atol=0)
    with torch.no_grad():
        tuned_logits = peft_model(ids).logits
    assert (tuned_logits - base_logits).abs().max() > 1e-4, "the adapter changed nothing"


def test_selection_fills_devices_per_round_once_each_and_checks_fit(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=2, min_updates=2)
    cleanup_jobs.append(job["job_id"])
    small_id, small = register(server, name="tiny-ram", capabilities={**CAPABILITIES, "ram_mb": 1})
    # A runtime PocketTune builds no artifacts for (an onnxruntime device would get the tier
    # compiled for it: tests/coordinator/test_coordinator_protocol.py and tests/fleet).
    other_runtime_id, other_runtime = register(server, name="tflite-only",
                                               capabilities={**CAPABILITIES, "runtimes": ["tflite"]})
    first, second, third = (register(server, name=f"sel-{i}")[1] for i in range(3))

    for device, why in ((small, "RAM"), (other_runtime, "executorch runtime")):
        response = device.get("/api/v1/tasks/next")
        assert response.status_code == 204 and why in response.headers["PocketTune-No-Task-Reason"]
        assert response.headers["Retry-After"].isdigit()
    one = first.get("/api/v1/tasks/next").json()
    assert first.get("/api/v1/tasks/next").json()["task_id"] == one["task_id"], "asking again re-issues the task"
    two = second.get("/api/v1/tasks/next").json()
    assert two["task_id"] != one["task_id"] and two["round"] == one["round"] == 1
    full = third.get("/api/v1/tasks/next")
    assert full.status_code == 204 and "all its 2 devices" in full.headers["PocketTune-No-Task-Reason"]

    manifest = manifest_of(first, one)
    start = start_adapter(admin, job["job_id"], 0)
    response = upload(first, one, FakeTrainer(manifest).update(start, seed=1), meta())
    assert response.status_code == 201, response.text
    again = first.get("/api/v1/tasks/next")
    assert again.status_code == 204 and "already submitted" in again.headers["PocketTune-No-Task-Reason"]

    # A job may set the RAM floor itself.
    lenient = admin.running_job(rounds=1, devices_per_round=1, min_updates=1, min_ram_mb=0)
    cleanup_jobs.append(lenient["job_id"])
    offer = small.get("/api/v1/tasks/next")
    assert offer.status_code == 200 and offer.json()["job_id"] == lenient["job_id"]


def test_another_devices_task_is_403_unknown_task_404_and_duplicate_409(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=2, min_updates=2)
    cleanup_jobs.append(job["job_id"])
    _, owner = register(server, name="owner")
    _, intruder = register(server, name="intruder")
    task = owner.get("/api/v1/tasks/next").json()
    manifest = manifest_of(owner, task)
    tensors = FakeTrainer(manifest).update(start_adapter(admin, job["job_id"], 0), seed=3)
    assert_error(upload(intruder, task, tensors, meta()), 403, "forbidden")
    missing = dict(task, upload={**task["upload"], "url": "/api/v1/tasks/99999999/result"})
    assert_error(upload(owner, missing, tensors, meta()), 404, "not_found")
    assert upload(owner, task, tensors, meta()).status_code == 201
    assert_error(upload(owner, task, tensors, meta()), 409, "already_submitted")


def test_deadline_closes_round_with_what_it_has_and_late_result_gets_409(server, cleanup_jobs):
    admin = server.admin()
    deadline_s = 3.0
    job = admin.running_job(rounds=2, devices_per_round=3, min_updates=3, round_deadline_s=deadline_s)
    cleanup_jobs.append(job["job_id"])
    devices = [register(server, name=f"deadline-{i}")[1] for i in range(3)]
    tasks = [d.get("/api/v1/tasks/next").json() for d in devices]
    manifest = manifest_of(devices[0], tasks[0])
    start = start_adapter(admin, job["job_id"], 0)
    trainer = FakeTrainer(manifest)
    on_time = trainer.update(start, seed=7)
    assert upload(devices[0], tasks[0], on_time, meta(num_examples=5)).status_code == 201
    # devices[1] never answers; devices[2] answers after the deadline.
    opened = time.monotonic()
    detail = admin.wait_job(job["job_id"], lambda j: j["round_history"][0]["status"] == "closed",
                            timeout=deadline_s + 30, what="closed round 1 at its deadline")
    waited = time.monotonic() - opened
    round_one = detail["round_history"][0]
    assert round_one["close_reason"] == "deadline" and round_one["num_updates"] == 1
    assert waited < deadline_s + 5
    late = upload(devices[2], tasks[2], trainer.update(start, seed=8), meta())
    body = assert_error(late, 409, late.json()["error"]["code"])
    assert body["error"]["code"] in ("late", "round_closed")
    # One update: the global adapter is that update exactly.
    aggregated = start_adapter(admin, job["job_id"], 1)
    for key, value in on_time.items():
        np.testing.assert_array_equal(aggregated[key], value)
    # The next round opened, starting from round 1's adapter.
    assert detail["round_history"][1]["status"] == "open" and detail["current_round"] == 2
    next_task = devices[1].get("/api/v1/tasks/next").json()
    assert next_task["round"] == 2 and next_task["adapter"]["sha256"] == round_one["adapter"]["ptd"]["sha256"]
    # A round nobody answers still ends: at its deadline, carrying the adapter over unchanged.
    final = admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", timeout=deadline_s + 30)
    assert final["round_history"][1]["num_updates"] == 0
    assert final["round_history"][1]["adapter"]["ptd"]["sha256"] == round_one["adapter"]["ptd"]["sha256"]


def test_blob_range_requests_and_device_cannot_read_updates(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=2, min_updates=2)
    cleanup_jobs.append(job["job_id"])
    _, device = register(server, name="range")
    _, other = register(server, name="range-other")
    task = device.get("/api/v1/tasks/next").json()
    program = next(f for f in task["artifact"]["files"] if f["path"] == "model.pte")
    whole = fetch_verified(device, program)
    part = device.get(program["url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(whole)}"
    tail = device.get(program["url"], headers={"Range": f"bytes={len(whole) - 10}-"})
    assert tail.status_code == 206 and tail.content == whole[-10:]
    # Resuming: If-Range with the ETag (the sha256) still gets the range.
    resumed = device.get(program["url"], headers={"Range": "bytes=5-9", "If-Range": f'"{program["sha256"]}"'})
    assert resumed.status_code == 206 and resumed.content == whole[5:10]
    assert_error(device.get(program["url"], headers={"Range": f"bytes={len(whole) + 10}-"}), 416,
                 "range_not_satisfiable")
    head = device.head(program["url"])
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(whole))
    assert head.headers["Accept-Ranges"] == "bytes" and head.headers["ETag"] == f'"{program["sha256"]}"'
    assert_error(device.get("/api/v1/blobs/" + "f" * 64), 404, "not_found")
    assert_error(device.get("/api/v1/blobs/not-a-hash"), 404, "not_found")

    manifest = manifest_of(device, task)
    tensors = FakeTrainer(manifest).update(start_adapter(admin, job["job_id"], 0), seed=11)
    stored = upload(device, task, tensors, meta()).json()
    # An update may leak its device's data: other devices (and its own) cannot fetch it; the admin can.
    assert_error(other.get(f"/api/v1/blobs/{stored['sha256']}"), 404, "not_found")
    assert_error(device.get(f"/api/v1/blobs/{stored['sha256']}"), 404, "not_found")
    assert admin.get(f"/api/v1/blobs/{stored['sha256']}").status_code == 200


def test_pause_holds_new_tasks_and_rounds_until_resume(server, cleanup_jobs):
    admin = server.admin()
    devices = [register(server, name=f"pause-{i}")[1] for i in range(2)]
    job = admin.running_job(rounds=2, devices_per_round=2, min_updates=2, round_deadline_s=300)
    cleanup_jobs.append(job["job_id"])
    job_id = job["job_id"]
    first = devices[0].get("/api/v1/tasks/next").json()
    assert first["round"] == 1

    paused = admin.post(f"/api/v1/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert_error(admin.post(f"/api/v1/jobs/{job_id}/pause"), 409, "job_not_running")
    # No new task while paused...
    response = devices[1].get("/api/v1/tasks/next")
    assert response.status_code == 204
    # ...but work already handed out still counts, and the round still closes.
    trainer = FakeTrainer(manifest_of(devices[0], first))
    start = start_adapter(admin, job_id, 0)
    assert upload(devices[0], first, trainer.update(start, seed=1), meta()).status_code == 201
    admin.post(f"/api/v1/jobs/{job_id}/resume")
    second = devices[1].get("/api/v1/tasks/next").json()
    admin.post(f"/api/v1/jobs/{job_id}/pause")
    assert upload(devices[1], second, trainer.update(start, seed=2), meta()).status_code == 201
    state = admin.wait_job(job_id, lambda j: j["round_history"][0]["status"] == "closed", what="closed round 1")
    assert state["status"] == "paused" and len(state["round_history"]) == 1, "a paused job opened a round"

    resumed = admin.post(f"/api/v1/jobs/{job_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "running"
    assert [r["round"] for r in resumed.json()["round_history"]] == [1, 2]
    assert resumed.json()["round_history"][1]["status"] == "open"
    assert devices[0].get("/api/v1/tasks/next").json()["round"] == 2
    assert_error(admin.post(f"/api/v1/jobs/{job_id}/resume"), 409, "job_not_running")
    assert_error(admin.post("/api/v1/jobs/999999/pause"), 404, "not_found")
    assert_error(devices[0].post(f"/api/v1/jobs/{job_id}/pause"), 403, "forbidden")


def test_an_admin_can_close_an_open_round_now_with_what_it_has(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=2, devices_per_round=3, min_updates=3, round_deadline_s=300)
    cleanup_jobs.append(job["job_id"])
    devices = [register(server, name=f"close-now-{i}")[1] for i in range(2)]
    tasks = [d.get("/api/v1/tasks/next").json() for d in devices]
    start = start_adapter(admin, job["job_id"], 0)
    update = FakeTrainer(manifest_of(devices[0], tasks[0])).update(start, seed=31)
    assert upload(devices[0], tasks[0], update, meta(num_examples=12)).status_code == 201
    url = f"/api/v1/jobs/{job['job_id']}/rounds/1/close"
    assert_error(devices[0].post(url), 403, "forbidden")
    closed = admin.post(url)
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert body["status"] == "closed" and body["close_reason"] == "admin" and body["num_updates"] == 1
    np.testing.assert_array_equal(start_adapter(admin, job["job_id"], 1)[sorted(update)[0]], update[sorted(update)[0]])
    assert_error(admin.post(url), 409, "round_closed")
    assert_error(upload(devices[1], tasks[1], update, meta()), 409, "round_closed")
    assert admin.job(job["job_id"])["round_history"][1]["status"] == "open"
    assert_error(admin.post(f"/api/v1/jobs/{job['job_id']}/rounds/7/close"), 404, "not_found")


def test_a_cosine_schedule_offers_each_round_its_own_rate_and_bad_schedules_are_refused(server, cleanup_jobs):
    from models.lr_schedule import lr_for_round

    admin = server.admin()
    rounds = 3
    job = admin.running_job(rounds=rounds, devices_per_round=1, min_updates=1, lr=0.4,
                            tier={**JOB_TIER, "train": {"lr_schedule": "cosine", "lr_min": 0.1}})
    cleanup_jobs.append(job["job_id"])
    assert job["tier"]["train"]["lr_schedule"] == "cosine" and job["tier"]["train"]["lr_min"] == 0.1
    device = register(server, name="cosine")[1]
    offered = []
    for round_number in range(1, rounds + 1):
        task = device.get("/api/v1/tasks/next").json()
        assert task["round"] == round_number
        offered.append(task["train"]["lr"])
        start = start_adapter(admin, job["job_id"], round_number - 1)
        update = FakeTrainer(manifest_of(device, task)).update(start, seed=round_number)
        assert upload(device, task, update, meta(num_examples=8)).status_code == 201
    # round 1 at the full rate, then down the half cosine towards 0.04, never reaching it
    expected = [0.04 + 0.36 * (1 + np.cos(np.pi * (r - 1) / rounds)) / 2 for r in range(1, rounds + 1)]
    np.testing.assert_allclose(offered, expected, rtol=1e-12)
    assert offered == [lr_for_round(0.4, "cosine", 0.1, r, rounds) for r in range(1, rounds + 1)]
    assert offered[0] == 0.4 and offered[0] > offered[1] > offered[2] > 0.04
    assert "sampling" not in task["train"]     # the default walk is not spelled out (older devices' protocol)
    for train, says in (({"lr_schedule": "linear"}, "learning-rate schedule"),
                        ({"lr_schedule": "cosine", "lr_min": 1.5}, "lr_min"),
                        ({"lr_schedule": "cosine", "lr_min": -0.1}, "lr_min"),
                        ({"local_sampling": "shuffled"}, "local sampling"),
                        ({"local_sampling": 1}, "local sampling")):
        before = query(server.database, "SELECT COUNT(*) FROM jobs")
        response = admin.post("/api/v1/jobs", json={"model": "tiny", "task": "bbcnews", "rounds": 2,
                                                    "tier": {**JOB_TIER, "train": train}})
        body = assert_error(response, 422, "invalid_field")
        assert body["error"]["message"].startswith("tier: ") and says in body["error"]["message"], body
        assert query(server.database, "SELECT COUNT(*) FROM jobs") == before


def test_a_class_balanced_job_tells_its_devices_to_walk_their_data_by_class(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1,
                            tier={**JOB_TIER, "train": {"local_sampling": "class_balanced"}})
    cleanup_jobs.append(job["job_id"])
    assert job["tier"]["train"]["local_sampling"] == "class_balanced"
    device = register(server, name="balanced")[1]
    task = device.get("/api/v1/tasks/next").json()
    assert task["train"]["sampling"] == "class_balanced"
