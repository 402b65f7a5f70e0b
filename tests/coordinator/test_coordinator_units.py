"""Pieces of the coordinator on their own: FedAvg by hand, the update validator and the meta's
metrics, the blob store, the schema against its migrations (SQLite and PostgreSQL, and an
upgrade from 0001 with data in it), locking, and the CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from coordinator.errors import ApiError
from coordinator.storage import BlobStore
from coordinator.strategies import ClientUpdate, get_strategy, strategy_names
from coordinator.services.validation import max_update_bytes, parse_meta, validate_update
from coordinator_harness import REPO, new_database, safetensors_bytes

SPECS = [{"name": "l.lora_A.weight", "shape": [2, 3], "dtype": "float32"},
         {"name": "l.lora_B.weight", "shape": [4, 2], "dtype": "float32"}]


# --- FedAvg ------------------------------------------------------------------------------------

def test_fedavg_is_the_example_weighted_mean_of_a_and_b_separately():
    a1, a2 = np.array([[1.0, 2.0]], dtype=np.float32), np.array([[3.0, 6.0]], dtype=np.float32)
    b1, b2 = np.array([[1.0], [0.0]], dtype=np.float32), np.array([[0.0], [2.0]], dtype=np.float32)
    start = {"A": np.zeros((1, 2), np.float32), "B": np.zeros((2, 1), np.float32)}
    updates = [ClientUpdate({"A": a1, "B": b1}, num_examples=1), ClientUpdate({"A": a2, "B": b2}, num_examples=3)]
    out = get_strategy("fedavg").aggregate_train(start, updates)
    # By hand: weights 1/4 and 3/4.
    np.testing.assert_array_equal(out["A"], np.array([[0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 6]], np.float32))
    np.testing.assert_array_equal(out["B"], np.array([[0.25], [1.5]], np.float32))
    assert out["A"].dtype == np.float32 and out["B"].dtype == np.float32
    # The documented error term: mean of products = product of means + weighted covariance.
    w = np.array([0.25, 0.75])
    mean_of_products = w[0] * (b1 @ a1) + w[1] * (b2 @ a2)
    covariance = w[0] * (b1 - out["B"]) @ (a1 - out["A"]) + w[1] * (b2 - out["B"]) @ (a2 - out["A"])
    np.testing.assert_allclose(mean_of_products, out["B"] @ out["A"] + covariance, atol=1e-6)
    assert np.abs(covariance).max() > 0.1  # separate averaging is not exact here, as documented


def test_fedavg_with_no_update_carries_the_adapter_over_and_refuses_empty_examples():
    start = {"A": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = get_strategy("fedavg").aggregate_train(start, [])
    np.testing.assert_array_equal(out["A"], start["A"])
    with pytest.raises(ValueError):
        get_strategy("fedavg").aggregate_train(start, [ClientUpdate(start, num_examples=0)])
    assert "fedavg" in strategy_names()
    with pytest.raises(KeyError, match="unknown strategy"):
        get_strategy("no-such")


# --- validation --------------------------------------------------------------------------------

def _start():
    return {s["name"]: np.zeros(s["shape"], np.float32) for s in SPECS}


def _code(fn) -> str:
    with pytest.raises(ApiError) as caught:
        fn()
    return caught.value.code


def _message(fn) -> str:
    with pytest.raises(ApiError) as caught:
        fn()
    return caught.value.message


def test_validate_update_accepts_exactly_the_manifest_tensors():
    tensors = {s["name"]: np.full(s["shape"], 0.5, np.float32) for s in SPECS}
    result = validate_update(safetensors_bytes(tensors), SPECS, _start(), max_norm=10.0)
    assert result.delta_norm == pytest.approx(0.5 * np.sqrt(6 + 8))
    for key, value in tensors.items():
        np.testing.assert_array_equal(result.tensors[key], value)
    # a norm exactly at the bound is accepted; just above is not
    bound = float(np.sqrt(14) * 0.5)
    assert validate_update(safetensors_bytes(tensors), SPECS, _start(), max_norm=bound + 1e-9)
    assert _code(lambda: validate_update(safetensors_bytes(tensors), SPECS, _start(), max_norm=bound * 0.99)) == \
        "norm_exceeded"


def _raw(header: dict, payload: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


@pytest.mark.parametrize("data, code", [
    (b"", "malformed_update"),
    (struct.pack("<Q", 5) + b"[1,2]", "malformed_update"),
    (_raw({"l.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}, b"\0" * 25),
     "malformed_update"),  # trailing byte
    (_raw({"l.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, b"\0" * 20),
     "malformed_update"),  # byte count does not match the shape
    (_raw({"l.lora_A.weight": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "malformed_update"),
    (_raw({"l.lora_A.weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""), "malformed_update"),
    (_raw({"__metadata__": {"a": 1}}, b""), "malformed_update"),
    (_raw({"l.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}}, b"\0" * 32),
     "malformed_update"),  # a gap before the first tensor
    (_raw({"l.lora_A.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], "x": 1}}, b"\0" * 24),
     "malformed_update"),
])
def test_malformed_safetensors_is_refused_from_the_header(data, code):
    assert _code(lambda: validate_update(data, SPECS, _start(), max_norm=1.0)) == code


def test_update_size_is_bounded_by_the_manifest():
    limit = max_update_bytes(SPECS)
    assert limit >= (6 + 8) * 4
    assert _code(lambda: validate_update(b"\0" * (limit + 1), SPECS, _start(), 1.0)) == "update_too_large"


START_SHA = "ab" * 32


def _parse_meta(raw, max_num_examples: int = 100):
    return parse_meta(raw, max_num_examples=max_num_examples, start_adapters={START_SHA, "cd" * 32})


def test_parse_meta_is_strict():
    good = {"num_examples": 3, "loss_before": 1, "loss_after": 0.5, "train_seconds": 0,
            "bytes_downloaded": 0, "bytes_uploaded": 10, "start_adapter_sha256": START_SHA}
    parse_meta = _parse_meta
    assert parse_meta(json.dumps(good)).num_examples == 3
    assert parse_meta(json.dumps(good).encode()).loss_before == 1.0
    for bad, code in [("{", "invalid_json"), ('{"num_examples": Infinity}', "invalid_json"),
                      (json.dumps({**good, "num_examples": True}), "invalid_field"),
                      (json.dumps({**good, "bytes_uploaded": -1}), "invalid_field"),
                      (json.dumps({**good, "loss_after": "low"}), "invalid_field")]:
        assert _code(lambda: parse_meta(bad)) == code, bad


def test_parse_meta_checks_claims_against_the_task():
    """num_examples is capped by the task's steps x batch; the start adapter must be this task's;
    every number has an upper bound (no 2^63, no 400-digit integer reaches float() or a column)."""
    good = {"num_examples": 40, "loss_before": 1, "loss_after": 0.5, "train_seconds": 0,
            "bytes_downloaded": 0, "bytes_uploaded": 10, "start_adapter_sha256": START_SHA}
    assert _parse_meta(json.dumps(good), max_num_examples=40).num_examples == 40
    assert "at most 40 examples" in _message(lambda: _parse_meta(json.dumps({**good, "num_examples": 41}), 40))
    for field, value in [("num_examples", 10**15), ("num_examples", 2**63 - 1), ("num_examples", 2**63),
                         ("bytes_downloaded", 2**63), ("bytes_uploaded", 2**62), ("loss_before", 10**400),
                         ("train_seconds", 10**400), ("loss_after", 1e308), ("train_seconds", 1e300)]:
        assert _code(lambda: _parse_meta(json.dumps({**good, field: value}), 10**18)) == "invalid_field", field
    for start in ["ef" * 32, None, 7, ""]:
        assert _code(lambda: _parse_meta(json.dumps({**good, "start_adapter_sha256": start}))) == "invalid_field"
    missing = {k: v for k, v in good.items() if k != "start_adapter_sha256"}
    assert "start_adapter_sha256" in _message(lambda: _parse_meta(json.dumps(missing)))
    assert _code(lambda: _parse_meta("[" * 100_000)) == "invalid_json"
    assert _code(lambda: _parse_meta('{"num_examples": 3, "num_examples": 4}')) == "invalid_json"


METRICS = {"steps": 5, "flops_per_step": 1_234_567, "compute_seconds": 0.8, "achieved_gflops": 7.7,
           "peak_gflops": 20.5, "flop_utilization": 0.376, "download_seconds": 1.5, "previous_upload_seconds": None,
           "peak_rss_mb": 412.0, "slowdown": 2.5, "virtual_seconds": 9.25}


def test_meta_metrics_are_optional_and_checked_key_by_key():
    good = {"num_examples": 3, "loss_before": 1, "loss_after": 0.5, "train_seconds": 0,
            "bytes_downloaded": 0, "bytes_uploaded": 10, "start_adapter_sha256": START_SHA}
    parse_meta = _parse_meta
    assert parse_meta(json.dumps(good)).metrics is None
    assert parse_meta(json.dumps({**good, "metrics": None})).metrics is None
    assert parse_meta(json.dumps({**good, "metrics": {}})).metrics == {}
    parsed = parse_meta(json.dumps({**good, "metrics": METRICS})).metrics
    assert parsed == METRICS and isinstance(parsed["flops_per_step"], float) and isinstance(parsed["steps"], int)
    assert parse_meta(json.dumps({**good, "metrics": {"previous_upload_seconds": 0.25}})).metrics == {
        "previous_upload_seconds": 0.25}
    extra = {"probe_loss_before": 2.0, "probe_loss_after": 1.5, "artifact_bytes_downloaded": 7, "rank_pruned": False}
    assert parse_meta(json.dumps({**good, "bytes_downloaded": 7, "metrics": extra})).metrics == extra
    for metrics, snippet in [
        ([1, 2], "meta.metrics must be a JSON object"),
        ({"accuracy": 0.9}, 'unknown fields ["accuracy"]'),
        ({"steps": 0}, "meta.metrics.steps"), ({"steps": 2.5}, "meta.metrics.steps"),
        ({"steps": True}, "meta.metrics.steps"),
        ({"peak_gflops": 0}, "meta.metrics.peak_gflops"), ({"slowdown": 0.5}, "meta.metrics.slowdown"),
        ({"compute_seconds": -1}, "meta.metrics.compute_seconds"),
        ({"flop_utilization": "high"}, "meta.metrics.flop_utilization"),
        ({"download_seconds": None}, "meta.metrics.download_seconds"),
        ({"virtual_seconds": 1e400}, "meta.metrics.virtual_seconds"),  # JSON's 1e400 parses as inf
        ({"probe_loss_before": -1}, "meta.metrics.probe_loss_before"),
        ({"rank_pruned": 1}, "meta.metrics.rank_pruned"),
        # the artifact cannot be more than everything the task downloaded
        ({"artifact_bytes_downloaded": 1}, "more than the task's bytes_downloaded"),
    ]:
        with pytest.raises(ApiError) as caught:
            parse_meta(json.dumps({**good, "metrics": metrics}).replace("Infinity", "1e400"))
        assert caught.value.code == "invalid_field" and snippet in caught.value.message, (metrics, caught.value)
    assert _code(lambda: parse_meta(json.dumps({**good, "metrics": {"steps": float("nan")}}))) == "invalid_json"


# --- blob store --------------------------------------------------------------------------------

def test_blob_store_stages_durably_and_publishes_atomically(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    staged = store.stage(b"hello")
    assert staged.tmp_path.read_bytes() == b"hello" and store.blob_files() == []
    assert not store.exists(staged.sha256), "a staged blob must not be visible before commit"
    ref = staged.commit()
    assert store.read_bytes(ref.sha256) == b"hello" and ref.size == 5 and staged.created
    assert list(store.tmp_dir.iterdir()) == []
    assert store.put_bytes(b"hello") == ref and len(store.blob_files()) == 1  # deduplicated
    with store.stage(b"discarded") as abandoned:
        pass
    assert not abandoned.tmp_path.exists() and not store.exists(abandoned.sha256)
    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 3_000_000)
    assert store.read_bytes(store.put_file(source).sha256) == source.read_bytes()
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_stale_staging_files_are_removed_at_start(tmp_path):
    import os

    store = BlobStore(tmp_path / "blobs")
    stale = store.stage(b"left by a crash")
    fresh = store.stage(b"being written now")
    os.utime(stale.tmp_path, (0, 0))
    assert store.remove_stale_staging() == 1
    assert not stale.tmp_path.exists() and fresh.tmp_path.exists()


# --- schema, migrations and locking -------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_create_exactly_the_models_schema(backend, tmp_path, request):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from coordinator.db import Database
    from coordinator.migrations import head_revision
    from coordinator.models import Base

    database = new_database(backend, tmp_path)
    request.addfinalizer(database.drop)
    db = Database(database.url)
    try:
        assert db.upgrade_schema() == head_revision()
        assert db.upgrade_schema() == head_revision()  # idempotent on restart
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations disagree; write a migration: {diff}"
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migrations_upgrade_a_0001_database_with_data(backend, tmp_path, request):
    """Jobs and updates written at 0001 keep working: eval_examples 100, metrics null (0002), the
    uniform configurator and tasks without a tier of their own (0003), an empty rejection log (0004);
    and back down."""
    from alembic import command
    from sqlalchemy import text

    from coordinator.db import Database
    from coordinator.migrations import alembic_config, current_revision, head_revision

    database = new_database(backend, tmp_path)
    request.addfinalizer(database.drop)
    db = Database(database.url)
    stamp = "'2026-11-22 08:00:00'"
    rows = [
        "INSERT INTO devices (id, name, platform, token_sha256, capabilities, registered_at, last_seen_at) "
        f"VALUES (1, 'p', 'android', '{'0' * 64}', '{{}}', {stamp}, {stamp})",
        "INSERT INTO jobs (id, name, model, task, tier, rounds, devices_per_round, min_updates, round_deadline_s, "
        "local_steps, lr, strategy, max_update_norm, status, created_at, updated_at) VALUES "
        f"(1, 'j', 'tiny', 'bbcnews', '{{}}', 1, 1, 1, 60.0, 1, 0.1, 'fedavg', 1.0, 'running', {stamp}, {stamp})",
        f"INSERT INTO rounds (id, job_id, number, status, opened_at, deadline_at, num_updates) VALUES "
        f"(1, 1, 1, 'open', {stamp}, {stamp}, 1)",
        f"INSERT INTO tasks (id, round_id, device_id, status, assigned_at) VALUES (1, 1, 1, 'submitted', {stamp})",
        "INSERT INTO updates (id, task_id, round_id, device_id, sha256, size, num_examples, loss_before, loss_after, "
        f"train_seconds, bytes_downloaded, bytes_uploaded, delta_norm, received_at) VALUES "
        f"(1, 1, 1, 1, '{'1' * 64}', 10, 4, 2.0, 1.5, 3.0, 100, 10, 0.5, {stamp})",
    ]
    try:
        with db.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            for row in rows:
                conn.execute(text(row))
        assert db.upgrade_schema() == head_revision() == "0010"
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT eval_examples, configurator, configurator_options, prepare_tiers, "
                                     "norm_clip_factor, eval_every FROM jobs")).all() == [(100, "uniform", None, "on_demand", None, 1)]
            assert conn.execute(text("SELECT disabled_at FROM devices")).all() == [(None,)]
            assert conn.execute(text("SELECT error FROM rounds")).all() == [(None,)]
            assert conn.execute(text("SELECT artifact_id, tier, start_ptd_sha256 FROM tasks")).all() == [
                (None, None, None)]
            assert conn.execute(text("SELECT metrics, num_examples, effective_rank FROM updates")).all() == [(None, 4, None)]
            assert conn.execute(text("SELECT COUNT(*) FROM evaluations")).scalar_one() == 0
            assert conn.execute(text("SELECT COUNT(*) FROM rejections")).scalar_one() == 0
            assert conn.execute(text("SELECT COUNT(*) FROM pruning_sources")).scalar_one() == 0
            assert conn.execute(text("SELECT privacy FROM jobs")).all() == [(None,)]
        with db.engine.begin() as conn:  # and back down, keeping the rows
            command.downgrade(alembic_config(conn), "0001")
            assert current_revision(conn) == "0001"
            assert conn.execute(text("SELECT COUNT(*) FROM updates")).scalar_one() == 1
        assert db.upgrade_schema() == "0010"
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_write_transactions_serialize_read_then_write(backend, tmp_path, request):
    """Two writers that read a counter and write it back: without the write lock one increment is lost."""
    from sqlalchemy import select

    from coordinator.db import Database
    from coordinator.models import Job, JobStatus, Round, RoundStatus, utcnow

    database = new_database(backend, tmp_path)
    request.addfinalizer(database.drop)
    db = Database(database.url)
    try:
        db.upgrade_schema()
        now = utcnow()
        with db.write() as session:
            job = Job(name="j", model="tiny", task="t", tier={}, rounds=1, devices_per_round=1, min_updates=1,
                      round_deadline_s=1.0, local_steps=1, lr=0.1, strategy="fedavg", max_update_norm=1.0,
                      status=JobStatus.RUNNING, created_at=now, updated_at=now)
            session.add(job)
            session.flush()
            round_ = Round(job_id=job.id, number=1, status=RoundStatus.OPEN, opened_at=now, deadline_at=now,
                           num_updates=0)
            session.add(round_)
            session.flush()
            round_id = round_.id
        first_has_read, second_started = threading.Event(), threading.Event()
        errors = []

        def increment(first: bool):
            try:
                if not first:
                    first_has_read.wait(10)
                    second_started.set()
                with db.write() as session:
                    locked = db.lock(session, Round, round_id)
                    value = locked.num_updates
                    if first:
                        first_has_read.set()
                        second_started.wait(10)
                        time.sleep(0.5)  # without the lock, the second writer reads the old value now
                    locked.num_updates = value + 1
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=increment, args=(first,)) for first in (True, False)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors, errors
        with db.read() as session:
            assert session.scalar(select(Round.num_updates).where(Round.id == round_id)) == 2
    finally:
        db.dispose()


def test_in_memory_sqlite_is_refused():
    from coordinator.db import Database

    with pytest.raises(ValueError, match="in-memory"):
        Database("sqlite://")


# --- command line ------------------------------------------------------------------------------

def test_coordinator_help_documents_every_option():
    from pockettune.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["coordinator"]
    text = sub.format_help()
    options = [a for a in sub._actions if a.option_strings and "-h" not in a.option_strings]
    assert {o.option_strings[0] for o in options} >= {"--host", "--port", "--db", "--debug", "--admin-token",
                                                      "--enrollment-key", "--instance", "--artifact-cache"}
    for action in options:
        assert action.help and len(action.help) > 15, f"{action.option_strings[0]} has no real help"
        assert action.option_strings[0] in text
    proc = subprocess.run([sys.executable, "-m", "pockettune", "coordinator", "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""})
    assert proc.returncode == 0 and "waitress" in proc.stdout and "--debug" in proc.stdout, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be in [0, 65535]"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--tick", "0"], "--tick must be positive"),
    (["--db", "sqlite://"], "in-memory"),
    (["--debug", "--port", "0"], "--debug needs a fixed --port"),
    (["--db", "nosuchdb://x"], "bad database URL 'nosuchdb://x'"),
    (["--db", "not a url"], "bad database URL"),
    (["--db", "postgresql+psycopg://postgres@127.0.0.1:1/none"], "cannot open the database"),
])
def test_bad_coordinator_arguments_are_one_line_exit_2(args, message, tmp_path, capsys):
    from pockettune.cli import main

    code = main(["coordinator", "--instance", str(tmp_path / "instance"), *args])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pockettune coordinator: error:") and message in err[0], err


def test_waitress_serves_by_default_and_flask_only_with_debug(tmp_path):
    """The production server unless --debug: told apart by the Server header each one sends."""
    import socket

    import requests

    from coordinator_harness import ServedCoordinator, TestDatabase

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    database = TestDatabase("sqlite", f"sqlite:///{tmp_path / 'debug.sqlite3'}")
    debug = ServedCoordinator(database, tmp_path / "instance", tmp_path / "cache",
                              extra_args=["--debug", "--port", str(port)])
    try:
        debug.start()
        assert "Werkzeug" in requests.get(debug.base_url + "/api/v1/health", timeout=10).headers["Server"]
    finally:
        debug.stop()
    production = ServedCoordinator(database, tmp_path / "instance", tmp_path / "cache")
    try:
        production.start()
        assert requests.get(production.base_url + "/api/v1/health", timeout=10).headers["Server"] == "pockettune"
    finally:
        production.stop()


def test_norm_clipping_bounds_each_change_by_the_rounds_median_per_trained_value():
    from coordinator.services.norm_clipping import clip_scales, scaled

    # One tier for everyone: the outlier (10) is scaled to 4 x the median (1); the rest untouched.
    assert clip_scales([1.0, 1.0, 1.0, 10.0], [100] * 4, 4.0) == [1.0, 1.0, 1.0, 0.4]
    # Unequal tiers: lengths compare per trained value, so a big tier's longer change is not an outlier.
    assert clip_scales([1.0, 2.0, 2.0, 2.0 * np.sqrt(2)], [1, 4, 4, 8], 4.0) == [1.0] * 4
    # ...but one that is 10x longer per value than the median is clipped to 4x.
    scales = clip_scales([1.0, 2.0, 2.0, 20.0 * np.sqrt(2)], [1, 4, 4, 8], 4.0)
    assert scales[:3] == [1.0] * 3 and abs(scales[3] - 0.4) < 1e-12
    assert clip_scales([1.0, 100.0], [10, 10], 4.0) == [1.0, 1.0]        # too few for a median
    assert clip_scales([1.0, 1.0, 100.0], [10] * 3, None) == [1.0] * 3   # the job switched it off
    start = {"A": np.array([1.0, 2.0], dtype=np.float32)}
    np.testing.assert_array_equal(scaled({"A": np.array([3.0, 6.0], dtype=np.float32)}, start, 0.5)["A"], [2.0, 4.0])
