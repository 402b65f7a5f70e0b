"""Device metrics on results, the round endpoint, and the evaluation of every global adapter.

Over real HTTP (SQLite and PostgreSQL): metrics sent with a result are stored and served by
``GET /jobs/<id>/rounds/<n>``; round 0 and closed rounds get an evaluation on the task's
held-out split; ``eval_examples: 0`` records none. In process: the evaluation worker with a
test-only task (``FakeTask``): adapters are swapped into one loaded model, a failure is
recorded once and not retried, and an artifact missing from the export cache is rebuilt
from the blob store.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from coordinator_harness import (  # noqa: F401 (fixtures are used by name)
    DEVICE_METRICS, FakeTrainer, add_global_adapter, artifact_cache, assert_error, backend, cleanup_jobs, count_rows,
    manifest_of, meta, query, register, server, start_adapter, upload)


def _wait(admin, job_id: int, predicate, what: str, timeout: float = 120.0) -> dict:
    return admin.wait_job(job_id, predicate, timeout=timeout, what=what)


def _evaluated(round_number: int):
    def check(job: dict) -> bool:
        if round_number == 0:
            return job["initial_evaluation"] is not None
        return any(r["round"] == round_number and r["evaluation"] is not None for r in job["round_history"])
    return check


def _assert_sane(evaluation: dict, metric: str, num_examples: int) -> None:
    assert set(evaluation) == {"metric", "value", "ci95", "loss", "num_examples", "seconds", "error"}, evaluation
    if evaluation["value"] is not None:
        low, high = evaluation["ci95"]
        assert low <= evaluation["value"] <= high
    assert evaluation["error"] is None, evaluation
    assert evaluation["metric"] == metric and evaluation["num_examples"] == num_examples
    assert math.isfinite(evaluation["loss"]) and evaluation["loss"] > 0
    assert evaluation["seconds"] >= 0
    if metric == "accuracy":
        assert 0.0 <= evaluation["value"] <= 1.0
    else:
        assert evaluation["value"] >= 1.0  # a perplexity


def test_metrics_are_stored_and_served_by_the_round_endpoint(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(rounds=1, devices_per_round=3, min_updates=2)
    job_id = job["job_id"]
    cleanup_jobs.append(job_id)
    (with_id, with_metrics), (without_id, without_metrics), (idle_id, idle) = (
        register(server, name=f"metrics-{i}") for i in range(3))
    tasks = [d.get("/api/v1/tasks/next").json() for d in (with_metrics, without_metrics, idle)]
    trainer = FakeTrainer(manifest_of(with_metrics, tasks[0]))
    start = start_adapter(admin, job_id, 0)

    # A bad metrics object is refused and changes nothing; the message names the key.
    before = count_rows(server.database), server.blob_files()
    error = assert_error(upload(with_metrics, tasks[0], trainer.update(start, seed=1),
                                meta(metrics={**DEVICE_METRICS, "gpu_temperature": 71})), 422, "invalid_field")
    assert "gpu_temperature" in error["error"]["message"]
    error = assert_error(upload(with_metrics, tasks[0], trainer.update(start, seed=1),
                                meta(metrics={**DEVICE_METRICS, "download_seconds": -0.5})), 422, "invalid_field")
    assert "metrics.download_seconds" in error["error"]["message"]
    assert (count_rows(server.database), server.blob_files()) == before

    sent = {**DEVICE_METRICS, "previous_upload_seconds": 0.125}
    first = upload(with_metrics, tasks[0], trainer.update(start, seed=1), meta(num_examples=10, metrics=sent))
    assert first.status_code == 201, first.text
    # Results without metrics (every client before this field existed) still work.
    second = upload(without_metrics, tasks[1], trainer.update(start, seed=2), meta(num_examples=6))
    assert second.status_code == 201 and second.json()["round_status"] == "closed", second.text

    detail = admin.get(f"/api/v1/jobs/{job_id}/rounds/1")
    assert detail.status_code == 200, detail.text
    detail = detail.json()
    assert detail["job_id"] == job_id and detail["round"] == 1 and detail["status"] == "closed"
    assert detail["num_updates"] == 2 and detail["adapter"]["num_examples"] == 16
    assert detail["evaluation"] is None  # this job has eval_examples 0
    by_device = {t["device_id"]: t for t in detail["tasks"]}
    assert set(by_device) == {with_id, without_id, idle_id}
    stored = by_device[with_id]["update"]
    assert stored["metrics"] == sent and stored["num_examples"] == 10
    assert stored["sha256"] == first.json()["sha256"] and stored["delta_norm"] == first.json()["delta_norm"]
    assert stored["loss_before"] == 2.5 and stored["loss_after"] == 2.1 and stored["train_seconds"] == 3.5
    assert admin.get(stored["url"]).status_code == 200  # the admin can fetch the update itself
    assert by_device[without_id]["update"]["metrics"] is None
    assert by_device[idle_id]["status"] == "assigned" and by_device[idle_id]["update"] is None
    rows = query(server.database, "SELECT COUNT(*) FROM updates WHERE metrics IS NULL AND round_id IN "
                                  "(SELECT id FROM rounds WHERE job_id = :j)", j=job_id)
    assert rows == [(1,)]

    assert_error(admin.get(f"/api/v1/jobs/{job_id}/rounds/0"), 404, "not_found")
    assert_error(admin.get(f"/api/v1/jobs/{job_id}/rounds/2"), 404, "not_found")
    assert_error(admin.get(f"/api/v1/jobs/{job_id}/rounds/99999999999"), 404, "not_found")
    assert_error(admin.get("/api/v1/jobs/99999999/rounds/1"), 404, "not_found")
    assert_error(with_metrics.get(f"/api/v1/jobs/{job_id}/rounds/1"), 403, "forbidden")


def test_round_0_and_closed_rounds_are_evaluated_and_eval_examples_0_records_none(server, cleanup_jobs):
    admin = server.admin()
    _, device = register(server, name="evaluated")
    trainer = None

    def play_round(job_id: int, round_number: int, seed: int) -> None:
        nonlocal trainer
        task = device.get("/api/v1/tasks/next").json()
        assert task["job_id"] == job_id and task["round"] == round_number
        trainer = trainer or FakeTrainer(manifest_of(device, task))
        update = trainer.update(start_adapter(admin, job_id, round_number - 1), seed=seed, scale=0.05)
        response = upload(device, task, update, meta())
        assert response.status_code == 201 and response.json()["round_status"] == "closed", response.text

    # First a job without evaluation, played to the end.
    silent = admin.running_job(rounds=1, devices_per_round=1, min_updates=1, eval_examples=0)
    cleanup_jobs.append(silent["job_id"])
    assert silent["eval_examples"] == 0
    play_round(silent["job_id"], 1, seed=1)

    # Then one with evaluation: round 0 (the zero-shot tier) and round 1.
    job = admin.running_job(rounds=1, devices_per_round=1, min_updates=1, eval_examples=12)
    job_id = job["job_id"]
    cleanup_jobs.append(job_id)
    assert job["eval_examples"] == 12
    job = _wait(admin, job_id, _evaluated(0), "evaluated round 0")
    _assert_sane(job["initial_evaluation"], "accuracy", 12)
    play_round(job_id, 1, seed=2)
    job = _wait(admin, job_id, _evaluated(1), "evaluated round 1")
    assert job["status"] == "completed"
    _assert_sane(job["round_history"][0]["evaluation"], "accuracy", 12)
    detail = admin.get(f"/api/v1/jobs/{job_id}/rounds/1").json()
    assert detail["evaluation"] == job["round_history"][0]["evaluation"]
    assert query(server.database, "SELECT round FROM evaluations WHERE job_id = :j ORDER BY round", j=job_id) == [
        (0,), (1,)]

    # One worker takes the queue in order: the earlier job's turn has passed, and it recorded nothing.
    assert query(server.database, "SELECT COUNT(*) FROM evaluations WHERE job_id = :j", j=silent["job_id"]) == [(0,)]
    silent = admin.job(silent["job_id"])
    assert silent["initial_evaluation"] is None and silent["round_history"][0]["evaluation"] is None


def test_a_perplexity_task_is_evaluated_too(server, cleanup_jobs):
    admin = server.admin()
    job = admin.running_job(task="chatterbot", rounds=1, eval_examples=8)
    cleanup_jobs.append(job["job_id"])
    job = _wait(admin, job["job_id"], _evaluated(0), "evaluated round 0")
    _assert_sane(job["initial_evaluation"], "perplexity", 8)


def test_job_task_and_eval_examples_are_validated(server):
    admin = server.admin()
    before = count_rows(server.database)["jobs"]
    base = {"model": "tiny", "task": "bbcnews", "rounds": 1}
    for fields, snippet in [({"task": "mnist"}, "known: bbcnews, chatterbot"),
                            ({"eval_examples": -1}, "eval_examples"), ({"eval_examples": 100_001}, "eval_examples"),
                            ({"eval_examples": 2.5}, "eval_examples"), ({"eval_examples": True}, "eval_examples"),
                            ({"eval_every": 0}, "eval_every"), ({"eval_every": 1.5}, "eval_every"),
                            ({"eval_every": "2"}, "eval_every")]:
        error = assert_error(admin.post("/api/v1/jobs", json={**base, **fields}), 422, "invalid_field")
        assert snippet in error["error"]["message"], error
    assert count_rows(server.database)["jobs"] == before


# --- the worker in process, with a test-only task ---------------------------------------------------

@pytest.fixture
def fake_task(monkeypatch):
    """``FakeTask`` registered as task "fake" for this test only."""
    from models.tasks import Task, base

    class FakeTask(Task):
        name = "fake"
        metric = "accuracy"
        fail = False
        seen: list[dict] = []

        def examples(self, split):
            return [base.Example(example_id=f"fake/{split}/{i}", context="Some news text.", prompt="\nTopic:",
                                 target=" tech", label="tech") for i in range(50)]

        def evaluate(self, model, tokenizer, examples, seq, batch=16):
            import torch

            if FakeTask.fail:
                raise RuntimeError("the fake task was told to fail")
            b_norm = sum(float(p.detach().norm()) for n, p in model.named_parameters() if "lora_B" in n)
            ids, labels = self.batches(tokenizer, examples, 2, seq)[0]
            with torch.no_grad():
                logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
            FakeTask.seen.append({"model": id(model), "b_norm": b_norm, "examples": len(examples), "seq": seq})
            return {"metric": "accuracy", "value": 0.5, "loss": float(loss), "num_examples": len(examples)}

    monkeypatch.setitem(base.TASKS._classes, "fake", FakeTask)  # a fake task, registered for this test only
    return FakeTask


def _app_state(tmp_path, artifact_cache):
    from coordinator.app import create_app

    app = create_app({"DATABASE": f"sqlite:///{tmp_path / 'db.sqlite3'}", "INSTANCE_PATH": str(tmp_path / "inst"),
                      "ARTIFACT_CACHE": str(artifact_cache), "ADMIN_TOKEN": "a", "ENROLLMENT_KEY": "e",
                      "BACKGROUND": False})
    return app.extensions["pockettune"]


def _prepared_job(state, eval_examples: int = 7, rounds: int = 2, eval_every: int = 1) -> int:
    from conftest import tiny_tier

    from coordinator.models import Job, JobStatus, utcnow

    now = utcnow()
    with state.db.write() as session:
        job = Job(name="fake", model="tiny", task="fake", tier=tiny_tier().to_dict(), rounds=rounds,
                  devices_per_round=1, min_updates=1, round_deadline_s=60.0, local_steps=1, lr=0.1,
                  strategy="fedavg", max_update_norm=100.0, eval_examples=eval_examples, eval_every=eval_every,
                  status=JobStatus.PREPARING,
                  created_at=now, updated_at=now)
        session.add(job)
        session.flush()
        job_id = job.id
    state.worker.prepare(job_id)
    return job_id


def test_worker_swaps_adapters_into_one_loaded_model(tmp_path, artifact_cache, fake_task, monkeypatch):
    import export.server_model
    from coordinator.models import Artifact, GlobalAdapter, Job
    from coordinator.services.evaluation import missing_evaluations

    loads = []
    original = export.server_model.load_artifact_model
    monkeypatch.setattr(export.server_model, "load_artifact_model",
                        lambda directory: loads.append(directory) or original(directory))
    state = _app_state(tmp_path, artifact_cache)
    try:
        job_id = _prepared_job(state)
        with state.db.read() as session:
            assert missing_evaluations(session) == [(job_id, 0)]
            initial = session.query(GlobalAdapter).filter_by(job_id=job_id, round=0).one()
            artifact = session.get(Artifact, session.get(Job, job_id).artifact_id)
        round0 = state.evaluator.evaluate(job_id, 0)
        assert round0 is not None and round0.error is None and round0.num_examples == 7
        assert round0.metric == "accuracy" and round0.value == 0.5 and round0.loss > 0
        assert state.evaluator.evaluate(job_id, 0) is None  # evaluated once only

        start = state.adapters.tensors(initial.weights_sha256)
        changed = {k: v + np.float32(0.1) for k, v in start.items()}
        add_global_adapter(state, job_id, 1, changed)
        round1 = state.evaluator.evaluate(job_id, 1)
        assert round1.error is None
        assert len(loads) == 1, "the model is loaded once per artifact, not per round"
        assert loads[0] == state.worker.cache.directory(artifact.key)  # the export cache's own directory
        first, second = fake_task.seen
        assert first["model"] == second["model"] and first["seq"] == second["seq"] == 32
        assert first["b_norm"] == 0.0 < second["b_norm"], "round 1's adapter was not loaded into the model"
        assert round1.loss != round0.loss
        with state.db.read() as session:
            assert missing_evaluations(session) == []
    finally:
        state.db.dispose()


def test_an_adapter_already_scored_on_the_same_artifact_task_and_examples_is_not_scored_again(
        tmp_path, artifact_cache, fake_task):
    state = _app_state(tmp_path, artifact_cache)
    try:
        first, second, fewer = _prepared_job(state), _prepared_job(state), _prepared_job(state, eval_examples=5)
        scored = state.evaluator.evaluate(first, 0)
        assert len(fake_task.seen) == 1 and scored.seconds > 0
        copied = state.evaluator.evaluate(second, 0)       # the same initial adapter on the same artifact
        assert len(fake_task.seen) == 1 and copied.seconds == 0.0
        assert (copied.metric, copied.value, copied.loss, copied.num_examples) == (
            scored.metric, scored.value, scored.loss, scored.num_examples)
        assert state.evaluator.evaluate(fewer, 0).num_examples == 5 and len(fake_task.seen) == 2
    finally:
        state.db.dispose()


def test_eval_every_scores_round_0_every_kth_round_and_the_last_only(tmp_path, artifact_cache, fake_task):
    from coordinator.models import GlobalAdapter
    from coordinator.services.evaluation import missing_evaluations

    state = _app_state(tmp_path, artifact_cache)
    try:
        job_id = _prepared_job(state, rounds=5, eval_every=2)
        with state.db.read() as session:
            initial = session.query(GlobalAdapter).filter_by(job_id=job_id, round=0).one()
        start = state.adapters.tensors(initial.weights_sha256)
        for round_number in range(1, 6):
            add_global_adapter(state, job_id, round_number,
                                {k: v + np.float32(0.01 * round_number) for k, v in start.items()})
        with state.db.read() as session:   # what a restarted coordinator would queue
            assert missing_evaluations(session) == [(job_id, 0), (job_id, 2), (job_id, 4), (job_id, 5)]
        assert state.evaluator.evaluate(job_id, 1) is None and state.evaluator.evaluate(job_id, 3) is None
        for round_number in (0, 2, 4, 5):
            assert state.evaluator.evaluate(job_id, round_number).error is None
        with state.db.read() as session:
            assert missing_evaluations(session) == []
    finally:
        state.db.dispose()


def test_failed_evaluation_is_recorded_once_and_a_missing_export_is_rebuilt_from_blobs(
        tmp_path, artifact_cache, fake_task):
    from coordinator.services.artifacts import ArtifactCache
    from coordinator.services.evaluation import missing_evaluations

    state = _app_state(tmp_path, artifact_cache)
    try:
        job_id = _prepared_job(state)
        # This coordinator's export cache is empty: the worker rebuilds the directory from blobs.
        state.worker.cache = ArtifactCache(tmp_path / "empty-cache")
        fake_task.fail = True
        failed = state.evaluator.evaluate(job_id, 0)
        assert failed.error == "RuntimeError: the fake task was told to fail"
        assert failed.metric is None and failed.value is None and failed.num_examples is None
        with state.db.read() as session:
            assert missing_evaluations(session) == []  # recorded: not queued again at the next start
        assert state.evaluator.evaluate(job_id, 0) is None
        rebuilt = tmp_path / "inst" / "evaluation"
        (directory,) = list(rebuilt.iterdir())
        assert (directory / "manifest.json").is_file() and (directory / "initial_adapter").is_dir()
        assert not (directory / "model.pte").exists()  # the device program is not needed to evaluate
    finally:
        state.db.dispose()


def test_worker_thread_skips_jobs_with_evaluation_off_and_cancelled_jobs(tmp_path, artifact_cache, fake_task):
    from coordinator.models import Evaluation, Job, JobStatus
    from coordinator.services.evaluation import EvaluationWorker

    state = _app_state(tmp_path, artifact_cache)
    try:
        off = _prepared_job(state, eval_examples=0)
        cancelled = _prepared_job(state)
        with state.db.write() as session:
            session.get(Job, cancelled).status = JobStatus.CANCELLED
        evaluated = _prepared_job(state)
        # As after a restart: a fresh worker whose queue only the start-up scan fills.
        state.evaluator = EvaluationWorker(state)
        state.evaluator.start()
        deadline = time.monotonic() + 60
        while True:
            with state.db.read() as session:
                rows = {(e.job_id, e.round) for e in session.query(Evaluation)}
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert state.evaluator.evaluate(off, 0) is None and state.evaluator.evaluate(cancelled, 0) is None
        assert rows == {(evaluated, 0)}
    finally:
        state.evaluator.stop()
        state.db.dispose()
