"""One device process against a real coordinator over loopback, with the tiny model.

What a device uploads must be exactly what training the same program on the same data
computes: the test rebuilds the round's batches from the device's shard and trains the
eager PyTorch model the artifact was compiled from, then compares tensor by tensor.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_safetensors

from conftest import tiny_tier
from fleet_harness import ENROLLMENT_KEY, private_server, seeded_artifact_cache, start_device

LOCAL_STEPS, LR = 3, 0.5


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


def _wait(process, timeout=180):
    try:
        return process.wait(timeout)
    except Exception:
        process.kill()
        raise


def _round_updates(admin, job_id: int, round_number: int) -> list[dict]:
    response = admin.get(f"/api/v1/jobs/{job_id}/rounds/{round_number}")
    assert response.status_code == 200, response.text
    return [task["update"] for task in response.json()["tasks"] if task.get("update")]


def _update_tensors(admin, sha256: str) -> dict[str, np.ndarray]:
    response = admin.get(f"/api/v1/blobs/{sha256}")
    assert response.status_code == 200
    return load_safetensors(response.content)


@pytest.mark.parametrize("sampling", ["sequential", "class_balanced"])
def test_device_round_matches_eager_pytorch(artifact_cache, tmp_path, sampling):
    """Also: a job's ``local_sampling`` reaches the device, which walks its data that way."""
    from coordinator_harness import JOB_TIER

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        train = {} if sampling == "sequential" else {"local_sampling": sampling}
        job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1, local_steps=LOCAL_STEPS, lr=LR,
                                tier={**JOB_TIER, "train": train})
        device = start_device(server, tmp_path / "device", tmp_path / "device.log", "--task", "bbcnews",
                              "--shard", "2/4", "--max-tasks", "1", "--name", "eager-check")
        assert _wait(device) == 0, (tmp_path / "device.log").read_text()
        done = admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed")
        assert done["round_history"][0]["num_updates"] == 1
        [update] = _round_updates(admin, job["job_id"], 1)
        uploaded = _update_tensors(admin, update["sha256"])
        assert update["metrics"]["steps"] == LOCAL_STEPS + 1
        assert update["metrics"]["flops_per_step"] > 0 and 0 < update["metrics"]["flop_utilization"]
    finally:
        server.stop()

    # The same round in eager PyTorch: same start adapter (the seeded initial LoRA), same data.
    from export.pipeline import build_training_model
    from fleet.data import LocalData, round_examples
    from fleet.verify import train_eager
    from models.registry import load_base_model
    from models.tasks import PartitionSpec

    base = load_base_model("tiny")
    training = build_training_model(base, tiny_tier())
    data = LocalData.from_task("bbcnews", 1, 4, PartitionSpec.parse("iid", seed=0))
    examples = round_examples(data.examples, 1, LOCAL_STEPS, tiny_tier().batch, sampling)
    assert (examples != round_examples(data.examples, 1, LOCAL_STEPS, tiny_tier().batch)) == (sampling != "sequential")
    batches = data.task.batches(base.tokenizer, examples, tiny_tier().batch, tiny_tier().seq)
    _, eager = train_eager(training.peft_model, batches, LOCAL_STEPS, LR)
    assert set(uploaded) == set(eager)
    worst = max(float(np.abs(uploaded[k] - eager[k].numpy()).max()) for k in eager)
    changed = max(float(torch.from_numpy(uploaded[k]).abs().max()) for k in eager if "lora_B" in k)
    assert changed > 0, "training must have moved lora_B away from zero"
    assert worst <= 1e-5, f"device update differs from eager PyTorch by {worst}"


def test_hetlora_devices_prune_their_own_rank_and_the_coordinator_reads_it_from_the_tensors(artifact_cache, tmp_path):
    """Under the ``hetlora`` strategy a task asks the device to self-prune (models/rank_pruning.py).
    Round 1 starts from lora_B = 0, so nothing can have shrunk: no pruning. In round 2 the device
    decides for itself; whatever it decides, its update's zeros and the rank the coordinator
    records (read from the tensors) must agree with it."""
    from coordinator_harness import JOB_TIER
    from models.rank_pruning import effective_rank

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        job = admin.running_job(rounds=2, devices_per_round=1, min_updates=1, local_steps=LOCAL_STEPS, lr=LR,
                                tier=dict(JOB_TIER), strategy="hetlora")
        device = start_device(server, tmp_path / "device", tmp_path / "device.log", "--task", "bbcnews",
                              "--shard", "1/4", "--max-tasks", "2", "--name", "hetlora")
        assert _wait(device) == 0, (tmp_path / "device.log").read_text()
        admin.wait_job(job["job_id"], lambda j: j["status"] == "completed", what="completed")
        rank = JOB_TIER.get("lora_rank", 8)
        for round_number in (1, 2):
            [update] = _round_updates(admin, job["job_id"], round_number)
            pruned = update["metrics"]["rank_pruned"]
            tensors = _update_tensors(admin, update["sha256"])
            assert update["effective_rank"] == effective_rank(tensors) == (rank // 2 if pruned else rank)
            if round_number == 1:
                assert pruned is False
    finally:
        server.stop()


def _program_entry(admin, job: dict) -> dict:
    """The manifest's entry (sha256, size) for the job's training program."""
    manifest = admin.get(f"/api/v1/blobs/{job['artifact']['sha256']}").json()
    return manifest["files"]["model.pte"]


def test_device_refuses_tampered_artifact(artifact_cache, tmp_path):
    from fleet.data import LocalData
    from fleet.device import DeviceAgent, DeviceConfig
    from fleet.transport import RetryPolicy
    from models.tasks import PartitionSpec

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1)
        program = _program_entry(admin, job)["sha256"]
        blob = server.blob_dir / program[:2] / program
        blob.chmod(0o644)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF                   # one flipped byte in the middle of the program
        blob.write_bytes(bytes(data))
        agent = DeviceAgent(DeviceConfig(coordinator=server.base_url, state_dir=tmp_path / "device",
                                         data=LocalData.from_task("bbcnews", 0, 4, PartitionSpec()),
                                         enrollment_key=ENROLLMENT_KEY, name="careful",
                                         retry=RetryPolicy(give_up_after_s=30), peak_gflops=10.0))
        agent.ensure_registered()
        outcome, _ = agent.work_once()
        assert outcome.status == "refused_artifact", outcome
        assert "sha256" in outcome.detail
        artifact_dir = tmp_path / "device" / "artifacts" / job["artifact"]["sha256"]
        assert not (artifact_dir / "model.pte").exists(), "a refused file must not be kept"
        assert not list(artifact_dir.glob("*.part")), "nor a partial copy of it"
        assert admin.job(job["job_id"])["round_history"][0]["num_updates"] == 0
        # The same task is not trained later either: the device stays out of this round.
        assert agent.work_once()[0] is None
    finally:
        server.stop()


def test_device_survives_coordinator_restart(artifact_cache, tmp_path):
    """Kill the coordinator while the device waits for work; the device keeps retrying and,
    once it is back on the same port and database, takes and completes the next job."""
    server = private_server(tmp_path / "coordinator", artifact_cache)
    port = server.base_url.rsplit(":", 1)[1]
    device = None
    try:
        admin = server.admin()
        first = admin.running_job(rounds=1, devices_per_round=1, min_updates=1, local_steps=2)
        device = start_device(server, tmp_path / "device", tmp_path / "device.log", "--task", "bbcnews",
                              "--max-tasks", "2", "--name", "resilient")
        admin.wait_job(first["job_id"], lambda j: j["status"] == "completed", timeout=180, what="completed")
        server.kill()                              # SIGKILL: a crash, not a clean stop
        # Longer than the coordinator's Retry-After (10 s): the device must meet the refused
        # connection at least once and back off rather than exit.
        time.sleep(13)
        assert device.poll() is None, "the device must wait for the coordinator, not exit"
        server.extra_args = ["--port", port]
        server.start()
        second = server.admin().running_job(rounds=1, devices_per_round=1, min_updates=1, local_steps=2)
        assert _wait(device) == 0, (tmp_path / "device.log").read_text()
        done = server.admin().wait_job(second["job_id"], lambda j: j["status"] == "completed", what="completed")
        assert done["round_history"][0]["num_updates"] == 1
        log = (tmp_path / "device.log").read_text()
        assert "retrying" in log and "task" in log
    finally:
        if device is not None and device.poll() is None:
            device.send_signal(signal.SIGKILL)
        server.stop()


def test_download_resumes_a_partial_file_and_rejects_a_corrupt_one(artifact_cache, tmp_path):
    from fleet.transport import CoordinatorClient, IntegrityError, RetryPolicy

    server = private_server(tmp_path / "coordinator", artifact_cache)
    try:
        admin = server.admin()
        job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1)
        program = _program_entry(admin, job)
        whole = admin.get(f"/api/v1/blobs/{program['sha256']}").content
        client = CoordinatorClient(server.base_url, token=admin.token, retry=RetryPolicy(give_up_after_s=10))
        url = f"/api/v1/blobs/{program['sha256']}"

        dest = tmp_path / "resumed.pte"
        dest.with_name("resumed.pte.part").write_bytes(whole[:1000])     # an interrupted earlier fetch
        fetched = client.download(url, program["sha256"], dest)
        assert fetched == len(whole) - 1000, "only the missing tail is transferred"
        assert dest.read_bytes() == whole
        assert client.download(url, program["sha256"], dest) == 0         # cached: nothing transferred

        corrupt = tmp_path / "corrupt.pte"
        corrupt.with_name("corrupt.pte.part").write_bytes(b"x" * 1000)    # a partial file that went bad
        with pytest.raises(IntegrityError):
            client.download(url, program["sha256"], corrupt)
        assert not corrupt.exists() and not corrupt.with_name("corrupt.pte.part").exists()
        assert client.download(url, program["sha256"], corrupt) == len(whole)   # the next try starts clean
    finally:
        server.stop()
