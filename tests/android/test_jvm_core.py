"""The Android client's plain-JVM core (android_client/core), run from pytest so ``make test`` and CI run it.

* ``test_jvm_unit_tests``: scripts/jvm_tests.sh unit (javac + JUnit 4 from Debian; the script
  installs them when missing and fails, saying so, when it cannot): the protocol examples round
  trip, the HTTP client's retries, resumable verified downloads, the .ptd and safetensors
  formats, batching, and the Java tokenizer against the shared vectors (SmolLM2's tokenizer.json
  is exported here the way the exporter ships it).
* ``test_jvm_client_completes_a_round``: a real coordinator (the test harness, the session's tiny
  export) with a running one-round job; the JVM integration test registers, downloads (resuming
  one file, refetching a corrupted one), verifies, tokenizes, uploads a refused and then a valid
  update made by its FakeTrainerForTests; the admin API must then show exactly that update
  accepted and the round closed, and the device registered with its trainer's optimizers
  (``["sgd"]``, what the app's ExecuTorchTrainer declares).
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jvm_harness import TOKENIZER_NAMES, export_tokenizer, run_jvm_tests  # noqa: E402

MIN_UNIT_TESTS = 40


def test_jvm_unit_tests(tmp_path):
    for name in TOKENIZER_NAMES:
        export_tokenizer(name, tmp_path / "tokenizers")
    code, output, (passed, failed, skipped) = run_jvm_tests("unit", {"POCKETTUNE_TOKENIZER_DIR": str(tmp_path / "tokenizers")})
    assert code == 0, f"JVM unit tests failed (exit {code}):\n{output[-12000:]}"
    assert failed == 0 and skipped == 0 and passed >= MIN_UNIT_TESTS, output[-4000:]


def test_jvm_client_completes_a_round(tiny_fp32_artifact, tmp_path_factory, tmp_path):
    from coordinator_harness import ENROLLMENT_KEY, load_safetensors, rejection_log
    from fleet_harness import private_server, seeded_artifact_cache

    cache = seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)
    server = private_server(tmp_path / "coordinator", cache)
    try:
        admin = server.admin()
        job = admin.running_job(name="android-jvm", rounds=1, devices_per_round=1, min_updates=1, local_steps=4)
        report_path = tmp_path / "jvm-report.json"
        code, output, (passed, failed, skipped) = run_jvm_tests("integration", {
            "POCKETTUNE_COORDINATOR_URL": server.base_url,
            "POCKETTUNE_ENROLLMENT_KEY": ENROLLMENT_KEY,
            "POCKETTUNE_IT_STATE_DIR": str(tmp_path / "jvm-device"),
            "POCKETTUNE_IT_REPORT": str(report_path),
        })
        assert code == 0 and (passed, failed, skipped) == (1, 0, 0), (
            f"JVM integration test failed (exit {code}):\n{output[-12000:]}\n--- coordinator log ---\n"
            f"{server.log()[-6000:]}")
        report = json.loads(report_path.read_text())

        # The device declared the optimizers its trainer supports, and the coordinator kept them.
        (device,) = [d for d in admin.get("/api/v1/devices").json()["devices"] if d["name"] == "jvm-integration-phone"]
        assert device["capabilities"].get("optimizers") == ["sgd"], device

        # What the coordinator recorded is exactly what the JVM device sent.
        assert report["job_id"] == job["job_id"] and report["round"] == 1
        round_ = admin.get(f"/api/v1/jobs/{job['job_id']}/rounds/1").json()
        assert round_["status"] == "closed" and round_["num_updates"] == 1, round_
        (task,) = [t for t in round_["tasks"] if t["task_id"] == report["task_id"]]
        assert task["device_name"] == "jvm-integration-phone" and task["status"] == "submitted"
        update = task["update"]
        assert update["sha256"] == report["update_sha256"] == report["server_sha256"]
        assert update["size"] == report["update_bytes"]
        assert update["num_examples"] == report["num_examples"]
        assert (update["loss_before"], update["loss_after"]) == (report["loss_before"], report["loss_after"])
        assert update["bytes_downloaded"] == report["bytes_downloaded"]
        assert update["delta_norm"] == report["delta_norm_server"]
        assert abs(update["delta_norm"] - report["delta_norm_jvm"]) <= 1e-6 * max(1.0, update["delta_norm"])
        assert update["metrics"]["steps"] == 5 and "previous_upload_seconds" in update["metrics"]

        # The update itself: the manifest's tensors, float32, a small change of the start adapter.
        manifest = admin.get(admin.job(job["job_id"])["artifact"]["url"]).json()
        blob = admin.get(update["url"])
        assert blob.status_code == 200
        tensors = load_safetensors(blob.content)
        assert {s["name"]: s["shape"] for s in manifest["lora"]["tensors"]} == {k: list(v.shape) for k, v in tensors.items()}
        assert all(v.dtype == np.float32 for v in tensors.values())
        zipped = admin.get(f"/api/v1/jobs/{job['job_id']}/adapter", params={"round": 0})
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
            start = load_safetensors(archive.read("adapter_model.safetensors"))
        norm = float(np.sqrt(sum(float(np.sum((tensors[k].astype(np.float64) - start[k]) ** 2)) for k in tensors)))
        assert abs(norm - report["delta_norm_jvm"]) <= 1e-6 * max(1.0, norm)

        # The downloads: every device file verified, one resumed (only the missing half moved),
        # one corrupted partial refetched; the refused upload is in the rejection log.
        device_files = sorted(p for p, f in manifest["files"].items() if f["device"])
        assert sorted(report["verified_files"]) == device_files
        resumed = manifest["files"][report["resumed_file"]]["size"]
        assert report["resumed_bytes"] == resumed - resumed // 2
        # the transposed tensor (422), then the repeat after acceptance (409, which the device reads as done)
        assert rejection_log(server.database, report["task_id"]) == ["tensor_shape", "already_submitted"]
        finished = admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed")
        assert finished["round_history"][0]["num_updates"] == 1
    finally:
        server.stop()
