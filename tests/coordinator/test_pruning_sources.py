"""FedSpine's pruned tiers cut from the tuned model: the coordinator's side, on the tiny preset.

The first time a job hands out a pruning ratio, the start adapter of that round is recorded as
the ratio's pruning source; every later device at that ratio gets the same tier (one artifact),
which the artifact worker exports by merging that adapter into the base to choose what stays.
The coordinator app runs in-process with its background threads off, so the test drives the
artifact worker's queue itself.
"""

from __future__ import annotations

import threading

import numpy as np

from conftest import tiny_tier
from coordinator_harness import add_global_adapter

PORTABLE = {"kernels": "portable"}   # ~10 s exports instead of ~45 s: kernels are not under test


def _state(tmp_path):
    from coordinator.app import create_app

    app = create_app({"DATABASE": f"sqlite:///{tmp_path / 'db.sqlite3'}", "INSTANCE_PATH": str(tmp_path / "inst"),
                      "ARTIFACT_CACHE": str(tmp_path / "artifacts"), "ADMIN_TOKEN": "a", "ENROLLMENT_KEY": "e",
                      "BACKGROUND": False})
    return app, app.extensions["pockettune"]


def _fedspine_job(state, prune_ratios) -> int:
    from coordinator.models import Job, JobStatus, utcnow

    now = utcnow()
    with state.db.write() as session:
        job = Job(name="spine", model="tiny", task="bbcnews", tier=tiny_tier(**PORTABLE).to_dict(), rounds=5,
                  devices_per_round=2, min_updates=1, round_deadline_s=60.0, local_steps=1, lr=0.1,
                  strategy="fedavg", max_update_norm=100.0, eval_examples=0, configurator="fedspine",
                  configurator_options={"prune_ratios": prune_ratios, "ranks": [4]},
                  status=JobStatus.PREPARING, created_at=now, updated_at=now)
        session.add(job)
        session.flush()
        job_id = job.id
    state.worker.prepare(job_id)   # the reference artifact, round 0's adapter, round 1 opened
    return job_id


def _store_global_adapter(state, job_id: int, round_number: int, seed: int) -> str:
    """A 'tuned' global adapter after ``round_number``: round 0's with large random B matrices."""
    from coordinator.models import GlobalAdapter

    with state.db.read() as session:
        initial = session.query(GlobalAdapter).filter_by(job_id=job_id, round=0).one()
    rng = np.random.default_rng(seed)
    tensors = {k: (rng.normal(0, 2.0, v.shape).astype(np.float32) if "lora_B" in k else np.array(v))
               for k, v in state.adapters.tensors(initial.weights_sha256).items()}
    return add_global_adapter(state, job_id, round_number, tensors, config_sha256=initial.config_sha256)


def _job(state, job_id):
    from coordinator.models import Job

    with state.db.read() as session:
        return session.get(Job, job_id)


def _sources(state, job_id):
    from coordinator.services.pruning_sources import job_pruning_sources

    with state.db.read() as session:
        return job_pruning_sources(session, job_id)


def _history(*tiers_by_round):
    """A device's past tasks: (round, tier) pairs."""
    from coordinator.scheduling.configurator import PastTask

    return tuple(PastTask(round=r, arm="a", tier=tier, local_steps=1, submitted=True) for r, tier in tiers_by_round)


def test_movers_get_a_cut_of_the_tuned_model_stayers_keep_theirs_and_the_worker_exports_it(tmp_path):
    from coordinator.services.pruning_sources import record_source, with_pruning_source

    app, state = _state(tmp_path)
    job_id = _fedspine_job(state, [0.0, 0.25, 0.5])
    job = _job(state, job_id)
    p0 = job.tier
    p25, p50 = (tiny_tier(prune_ratio=p, **PORTABLE).to_dict() for p in (0.25, 0.5))
    assert with_pruning_source(state, job, 1, p0) == p0                        # the reference: nothing to cut
    # A device that can only run p0.25 arrives in round 1: nothing is tuned, the base alone decides.
    assert with_pruning_source(state, job, 1, p25) == p25
    tuned_1, tuned_2 = _store_global_adapter(state, job_id, 1, seed=1), _store_global_adapter(state, job_id, 2, seed=2)
    # Later arrivals of that kind, and devices staying at p0.25, keep that cut (no new download) ...
    assert with_pruning_source(state, job, 3, p25) == p25
    assert with_pruning_source(state, job, 3, p25, _history((1, p25))) == p25
    # ... but a device moving up from p0 gets a cut of the tuned model: round 3 starts from round 2's adapter.
    assert with_pruning_source(state, job, 3, p25, _history((1, p0), (2, p0))) == {
        **p25, "prune_importance_adapter": tuned_2}
    # The first mover to p0.5 (round 2) fixes its cut for later movers (no refresh by default).
    assert with_pruning_source(state, job, 2, p50, _history((1, p0)))["prune_importance_adapter"] == tuned_1
    assert with_pruning_source(state, job, 3, p50, _history((2, p25)))["prune_importance_adapter"] == tuned_1
    # With a refresh after 1 round, a mover in round 3 gets a fresh cut; a device already at p0.5 keeps its own.
    mover = with_pruning_source(state, job, 3, p50, _history((2, p0)), refresh_rounds=1)
    assert mover["prune_importance_adapter"] == tuned_2
    stayer = with_pruning_source(state, job, 3, p50, _history((2, {**p50, "prune_importance_adapter": tuned_1})),
                                 refresh_rounds=1)
    assert stayer["prune_importance_adapter"] == tuned_1
    # Concurrent recorders of one (ratio, round) agree on one row, the first writer's.
    found = []
    threads = [threading.Thread(target=lambda: found.append(record_source(state, job_id, 0.75, 3))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {(s.round, s.adapter_sha256) for s in found} == {(2, tuned_2)}
    assert _sources(state, job_id) == [
        {"prune_ratio": 0.25, "round": 0, "adapter_sha256": None},
        {"prune_ratio": 0.25, "round": 2, "adapter_sha256": tuned_2},
        {"prune_ratio": 0.5, "round": 1, "adapter_sha256": tuned_1},
        {"prune_ratio": 0.5, "round": 2, "adapter_sha256": tuned_2},
        {"prune_ratio": 0.75, "round": 2, "adapter_sha256": tuned_2}]
    shown = app.test_client().get(f"/api/v1/jobs/{job_id}", headers={"Authorization": "Bearer a"}).get_json()
    assert [(s["prune_ratio"], s["round"]) for s in shown["pruning_sources"]] == [
        (0.25, 0), (0.25, 2), (0.5, 1), (0.5, 2), (0.75, 2)]

    # The artifact worker exports the p0.5 cut of round 1's adapter, read from the blob store.
    artifact_id = state.worker._artifact_for("tiny", {**p50, "prune_importance_adapter": tuned_1})
    manifest = state.artifact_info(artifact_id).artifact.manifest
    assert manifest["pruned_model"]["pruning"]["importance_adapter"] == tuned_1
    assert manifest["tier"]["prune_importance_adapter"] == tuned_1


def test_a_sparsity_step_re_cuts_devices_already_at_the_ratio_once(tmp_path):
    from coordinator.services.pruning_sources import with_pruning_source

    _, state = _state(tmp_path)
    job_id = _fedspine_job(state, [0.0, 0.5])
    job = _job(state, job_id)
    p0, p50 = job.tier, tiny_tier(prune_ratio=0.5, **PORTABLE).to_dict()
    assert with_pruning_source(state, job, 1, p50, cut_since=None) == p50        # a 2 GB phone, round 1: the base's cut
    for r in range(1, 6):
        tuned = _store_global_adapter(state, job_id, r, seed=r)
    # The schedule steps up to p0.5 in round 6: the phone that was there all along is re-cut
    # from round 5's adapter, as is the first device moving up; later arrivals share that cut.
    stayer = with_pruning_source(state, job, 6, p50, _history((5, p50)), cut_since=6)
    mover = with_pruning_source(state, job, 6, p50, _history((5, p0)), cut_since=6)
    late = with_pruning_source(state, job, 9, p50, _history((8, p0)), cut_since=6)
    assert stayer["prune_importance_adapter"] == mover["prune_importance_adapter"] == tuned
    assert late == stayer
    # Once re-cut, a device keeps its cut until the next step.
    assert with_pruning_source(state, job, 9, p50, _history((8, stayer)), cut_since=6) == stayer
    assert [(s["prune_ratio"], s["round"]) for s in _sources(state, job_id)] == [(0.5, 0), (0.5, 5)]


def test_a_device_waits_at_its_ratio_while_the_next_one_is_exported(tmp_path):
    from coordinator.models import Device, utcnow
    from coordinator.services.tiers import place_device

    _, state = _state(tmp_path)
    job_id = _fedspine_job(state, [0.25, 0.5])     # every arm prunes: devices start at p0.25
    with state.db.write() as session:
        device = Device(name="phone", platform="test", token_sha256="x" * 64,
                        capabilities={"runtimes": ["executorch"], "ram_mb": 8192},
                        registered_at=utcnow(), last_seen_at=utcnow())
        session.add(device)
        session.flush()
        device_id = device.id
    with state.db.read() as session:
        device = session.get(Device, device_id)
    placement, why = place_device(state, _job(state, job_id), device, 1)
    # p0.25's export was ordered; the device is not sent on to p0.5, whose cut is not fixed yet.
    assert placement is None and "waiting for the p0.25 tier's export" in why, why
    assert [s["prune_ratio"] for s in _sources(state, job_id)] == [0.25]
    model, tier, artifact_format = state.worker._queue.get_nowait()
    assert tier["prune_ratio"] == 0.25 and state.worker._queue.empty()
    state.worker._build_tier(model, tier, artifact_format)
    placement, why = place_device(state, _job(state, job_id), device, 1)
    assert placement is not None and placement.tier["prune_ratio"] == 0.25 and placement.arm == "p0.25-r4", why
