"""The frozen-prefix cache outlives a task, and simulated devices may share it without moving virtual time.

A device keeps its cache from task to task, so an example's prefix is computed once across
rounds (a cache made per task would forget everything it held in memory). Devices sharing a
cache directory compute an example once on the host, but each device's virtual clock is still
charged the prefix passes a phone with its own cache would run (``prefix_charged``).

The devices here are real :class:`fleet.device.DeviceAgent` objects training the tiny prefix
artifact in ExecuTorch; only the coordinator is left out: the task is a dict, and the artifact
and start adapter are "fetched" from the exported folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_BATCH, TINY_SEQ, tiny_batches
from export.executorch import ADAPTER_DATA_FILE
from export.manifest import read_manifest
from fleet import prefix_cache as prefix_cache_module
from fleet.prefix_cache import PrefixCache

REPO = Path(__file__).resolve().parents[2]
STEPS = 2
#: one round's worth of examples: every round trains the same ones (fleet.data.round_examples wraps)
EXAMPLES = STEPS * TINY_BATCH


@pytest.fixture()
def no_shared_caches(monkeypatch):
    """Each test starts with an empty process registry (as a fresh worker process does)."""
    monkeypatch.setattr(prefix_cache_module, "_SHARED", {})


@pytest.fixture(scope="module")
def local_data():
    from fleet.data import LocalData
    from models.tasks import PartitionSpec

    data = LocalData.from_task("bbcnews", 0, 1, PartitionSpec.parse("iid", seed=0))
    return LocalData(data.task, data.examples[:EXAMPLES], f"the first {EXAMPLES} examples")


def _agent(tmp_path, name, artifact, data, shared=None, trainers=None):
    """A device whose fetches return the exported artifact; ``trainers`` collects its trainers."""
    from fleet.device import DeviceAgent, DeviceConfig

    out, _, _ = artifact
    manifest = read_manifest(out).data
    agent = DeviceAgent(DeviceConfig(coordinator="http://127.0.0.1:9", state_dir=tmp_path / name, data=data,
                                     name=name, peak_gflops=100.0, simulated=True, shared_prefix_cache=shared))
    agent.fetch_artifact = lambda ref: (out, manifest)
    agent.fetch_adapter = lambda ref, fmt: out / ADAPTER_DATA_FILE
    if trainers is not None:
        make = agent._trainer

        def recording(*args, **kwargs):
            trainers.append(make(*args, **kwargs))
            return trainers[-1]

        agent._trainer = recording
    return agent, manifest


def _task(task_id, round_number):
    return {"task_id": task_id, "job_id": 1, "round": round_number, "artifact": {}, "adapter": {},
            "dataset": "bbcnews", "train": {"batch": TINY_BATCH, "seq": TINY_SEQ, "steps": STEPS, "lr": 0.5}}


def _train(agent, task_id, round_number=1):
    trained = agent.train_task(_task(task_id, round_number))
    assert trained.outcome.status == "trained", trained.outcome.detail
    return trained.outcome


def _round_ids(agent, artifact):
    """The token ids of the device's round (its batches, as the device builds them)."""
    out, _, _ = artifact
    manifest = read_manifest(out).data
    tokenizer = agent._tokenizer(out, manifest)
    return [ids for ids, _ in agent.config.data.task.batches(tokenizer, agent.config.data.examples,
                                                             TINY_BATCH, TINY_SEQ)]


def test_a_device_computes_each_example_prefix_once_across_tasks(tiny_prefix_artifact, local_data, tmp_path,
                                                                 no_shared_caches):
    from fleet.hardware import task_flops

    trainers = []
    agent, manifest = _agent(tmp_path, "phone", tiny_prefix_artifact, local_data, trainers=trainers)
    first = _train(agent, 1, round_number=1)
    assert (first.prefix_computed, first.prefix_charged) == (EXAMPLES, EXAMPLES)
    assert first.task_flops == task_flops(manifest, STEPS + 1, EXAMPLES)
    batches = _round_ids(agent, tiny_prefix_artifact)
    hidden_first = [trainers[0].prefix.hidden(ids) for ids in batches]

    second = _train(agent, 2, round_number=2)            # the same examples (the shard wraps)
    assert (second.prefix_computed, second.prefix_charged) == (0, 0)
    assert trainers[1] is not trainers[0] and trainers[1].prefix is trainers[0].prefix
    assert second.task_flops == task_flops(manifest, STEPS + 1, 0)
    assert trainers[1].prefix._program is None           # still released after prepare()
    for ids, expected in zip(batches, hidden_first):
        assert torch.equal(trainers[1].prefix.hidden(ids), expected)
    # What the cache holds is the prefix program's output, not something else kept by mistake.
    fresh = PrefixCache.for_artifact(tiny_prefix_artifact[0], manifest)
    assert torch.allclose(fresh.hidden(batches[0]), hidden_first[0], atol=1e-6)


def test_a_cache_of_another_prefix_version_is_not_used(tiny_prefix_artifact, tmp_path):
    from fleet.runtime_executorch import ExecuTorchTrainer

    out, _, _ = tiny_prefix_artifact
    manifest = read_manifest(out).data
    other = PrefixCache(out / manifest["prefix"]["file"], "f" * 64)
    trainer = ExecuTorchTrainer.for_artifact(out, manifest, out / ADAPTER_DATA_FILE, lr=0.5,
                                             cache_dir=tmp_path, prefix_cache=other)
    assert trainer.prefix is not other and trainer.prefix.version == PrefixCache.version_of(manifest)
    same = PrefixCache.for_artifact(out, manifest)
    assert ExecuTorchTrainer.for_artifact(out, manifest, out / ADAPTER_DATA_FILE, lr=0.5,
                                          prefix_cache=same).prefix is same


def test_devices_sharing_a_cache_directory_still_pay_their_own_prefix_passes(tiny_prefix_artifact, local_data,
                                                                            tmp_path, monkeypatch,
                                                                            no_shared_caches):
    shared = tmp_path / "shared-prefix"
    alone, _ = _agent(tmp_path, "alone", tiny_prefix_artifact, local_data)           # its own cache
    first, manifest = _agent(tmp_path, "first", tiny_prefix_artifact, local_data, shared=shared)
    second, _ = _agent(tmp_path, "second", tiny_prefix_artifact, local_data, shared=shared)
    unshared = _train(alone, 1)
    a = _train(first, 2)
    b = _train(second, 3)
    assert (a.prefix_computed, a.prefix_charged) == (EXAMPLES, EXAMPLES)
    # One process: one cache object; the host computed nothing for the second device, its clock
    # still pays every example (it never computed them itself).
    assert second.prefix_cache(tiny_prefix_artifact[0], manifest) is first.prefix_cache(tiny_prefix_artifact[0],
                                                                                          manifest)
    assert (b.prefix_computed, b.prefix_charged) == (0, EXAMPLES)
    assert b.task_flops == a.task_flops == unshared.task_flops
    assert b.virtual_compute_seconds == unshared.virtual_compute_seconds
    # Every entry went through to disk (write-through), although memory had room.
    assert len(list(shared.rglob("*.npy"))) == EXAMPLES

    # Another worker process: no shared memory, a new cache object, the same directory.
    monkeypatch.setattr(prefix_cache_module, "_SHARED", {})
    third, _ = _agent(tmp_path, "third", tiny_prefix_artifact, local_data, shared=shared)
    c = _train(third, 4)
    assert third.prefix_cache(tiny_prefix_artifact[0], manifest) is not first.prefix_cache(tiny_prefix_artifact[0],
                                                                                            manifest)
    assert (c.prefix_computed, c.prefix_charged) == (0, EXAMPLES)
    assert c.task_flops == unshared.task_flops
    # The next round, each device has had these examples: nobody pays again.
    assert _train(second, 5, round_number=2).prefix_charged == 0


WRITER = """
import sys, torch
from export.manifest import read_manifest
from fleet.prefix_cache import PrefixCache
out, cache_dir, ids_path, hidden_path = sys.argv[1:]
cache = PrefixCache.for_artifact(out, read_manifest(out).data, cache_dir, write_through=True)
torch.save(cache.hidden(torch.load(ids_path)), hidden_path)
assert cache.stats.computed == len(torch.load(ids_path))
"""


def test_an_entry_written_by_one_process_reads_back_identically_in_another(tiny_prefix_artifact, tmp_path):
    out, training, _ = tiny_prefix_artifact
    manifest = read_manifest(out).data
    ids = tiny_batches(training.base.tokenizer, count=1)[0][0]
    torch.save(ids, tmp_path / "ids.pt")
    cache_dir = tmp_path / "shared-prefix"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", WRITER, str(out), str(cache_dir), str(tmp_path / "ids.pt"),
                           str(tmp_path / "hidden.pt")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    written = torch.load(tmp_path / "hidden.pt")

    reader = PrefixCache.for_artifact(out, manifest, cache_dir, write_through=True)
    assert all(row in reader for row in ids)             # found on disk, without the prefix program
    assert torch.equal(reader.hidden(ids), written)
    assert reader.stats.computed == 0 and reader._program is None
    # A private cache keeps what fits in memory and writes nothing; the shared one wrote it all.
    assert len(list(cache_dir.rglob("*.npy"))) == TINY_BATCH
    private = PrefixCache.for_artifact(out, manifest, tmp_path / "private")
    private.hidden(ids)
    assert not list((tmp_path / "private").rglob("*.npy")) and private.stats.memory_bytes > 0


def test_the_simulator_hands_every_device_the_shared_directory(tmp_path):
    from fleet.simulator import FleetSimulation, FleetSpec

    shared = str(tmp_path / "shared-prefix")
    specs = FleetSimulation(FleetSpec(devices=3, shared_prefix_cache=shared), "http://127.0.0.1:9", "admin",
                            "enroll", tmp_path / "run", progress=False).device_specs()
    assert [spec["shared_prefix_cache"] for spec in specs] == [shared] * 3
    assert FleetSimulation(FleetSpec(devices=2), "http://127.0.0.1:9", "admin", "enroll", tmp_path / "run",
                           progress=False).device_specs()[0]["shared_prefix_cache"] is None
