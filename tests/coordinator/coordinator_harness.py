"""Test harness: real coordinator processes on loopback, their databases, and HTTP clients.

Not a conftest (a second ``conftest`` module would shadow ``tests/conftest.py`` for the
tests that ``from conftest import ...``); test modules import the fixtures they use from
here. Servers are shared by every module of a session through a process-level cache, so
each backend's coordinator starts once (its first start imports torch and ExecuTorch's
serializer in the background, ~10 s of CPU).

Backends: ``sqlite`` (a file in a temporary directory) and ``postgresql`` (the server in
``POCKETTUNE_TEST_DB``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; a fresh
schema per database handed out, dropped at the end; the tests skip, saying why, only when
no server answers).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_DIR = REPO / "tests" / "protocol"
DEFAULT_TEST_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]
ADMIN_TOKEN = "test-admin-" + secrets.token_hex(8)
ENROLLMENT_KEY = "test-enroll-" + secrets.token_hex(8)
#: The compiled tier of every test job: tests/conftest.py's tiny_tier(), so the artifact the
#: rest of the suite exports is the one the coordinator uses (one tiny export per session).
JOB_TIER = {"lora_rank": 4, "lora_layers": 2, "batch": 2, "seq": 32}
#: Keeps the 413 test cheap: a 1 MiB request limit (tiny updates are ~8 KB).
MAX_UPLOAD_MB = 1
TICK_S = 0.2
CAPABILITIES = {"ram_mb": 6144, "cores": 8, "gflops": 21.5, "bandwidth_mbps": 40.0, "runtimes": ["executorch"]}
#: Set POCKETTUNE_MEASUREMENTS=FILE to collect the measured figures (wall times) as JSON.
MEASUREMENTS_ENV = "POCKETTUNE_MEASUREMENTS"


# --- databases ---------------------------------------------------------------------------------

@dataclass
class TestDatabase:
    backend: str
    url: str           # with password, for the server's --db
    schema: str | None = None
    admin_url: str | None = None

    def engine(self):
        return create_engine(self.url)

    def drop(self) -> None:
        if self.schema:
            engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            engine.dispose()


_PG_UNREACHABLE: list[str] = []


def postgres_base_url() -> str:
    return os.environ.get("POCKETTUNE_TEST_DB") or DEFAULT_TEST_PG


def new_database(backend: str, tmp_dir: Path) -> TestDatabase:
    """A fresh, empty database of ``backend`` (skips the test if PostgreSQL does not answer)."""
    if backend == "sqlite":
        return TestDatabase("sqlite", f"sqlite:///{tmp_dir / 'coordinator.sqlite3'}")
    base = make_url(postgres_base_url())
    shown = base.render_as_string(hide_password=True)
    if _PG_UNREACHABLE:
        pytest.skip(_PG_UNREACHABLE[0])
    schema = f"pockettune_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        engine = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means: no server here
        reason = f"PostgreSQL not reachable at {shown}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        _PG_UNREACHABLE.append(reason)
        pytest.skip(reason)
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    return TestDatabase("postgresql", url.render_as_string(hide_password=False), schema=schema,
                        admin_url=base.render_as_string(hide_password=False))


def count_rows(database: TestDatabase) -> dict[str, int]:
    tables = ("devices", "jobs", "rounds", "tasks", "updates", "global_adapters", "artifacts", "artifact_files",
              "evaluations")
    engine = database.engine()
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in tables}
    finally:
        engine.dispose()


def rejection_log(database: TestDatabase, task_id: int) -> list[str]:
    """The error codes logged for refused uploads of ``task_id``, oldest first."""
    engine = database.engine()
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT code FROM rejections WHERE task_id = :t ORDER BY id"),
                                     {"t": task_id}).scalars())
    finally:
        engine.dispose()


def set_last_seen(database: TestDatabase, device_id: int, when) -> None:
    """Pretend a device was last heard of at ``when`` (through the coordinator's own model)."""
    from sqlalchemy.orm import Session

    from coordinator.models import Device

    engine = database.engine()
    try:
        with Session(engine) as session, session.begin():
            session.get(Device, device_id).last_seen_at = when
    finally:
        engine.dispose()


def query(database: TestDatabase, sql: str, **params) -> list:
    engine = database.engine()
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


# --- the served coordinator --------------------------------------------------------------------

@dataclass
class ServedCoordinator:
    """``python -m pockettune coordinator`` in a subprocess, on 127.0.0.1 and a free port."""

    database: TestDatabase
    instance: Path
    artifact_cache: Path
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    base_url: str = ""
    log_path: Path | None = None

    @property
    def blob_dir(self) -> Path:
        return self.instance / "blobs"

    def start(self, timeout: float = 120.0) -> "ServedCoordinator":
        self.instance.mkdir(parents=True, exist_ok=True)
        starts = len(list(self.instance.glob("server-*.log")))
        self.log_path = self.instance / f"server-{starts}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "POCKETTUNE_ADMIN_TOKEN": ADMIN_TOKEN,
               "POCKETTUNE_ENROLLMENT_KEY": ENROLLMENT_KEY, "PYTHONUNBUFFERED": "1"}
        port = [] if "--port" in self.extra_args else ["--port", "0"]
        command = [sys.executable, "-m", "pockettune", "coordinator", "--host", "127.0.0.1", *port,
                   "--db", self.database.url, "--instance", str(self.instance),
                   "--artifact-cache", str(self.artifact_cache), "--tick", str(TICK_S),
                   "--max-upload-mb", str(MAX_UPLOAD_MB), *self.extra_args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"coordinator exited with {self.process.returncode}:\n{self.log()}")
            found = pattern.search(self.log())
            if found:
                self.base_url = found.group(1)
                break
            time.sleep(0.05)
        else:
            self.kill()
            raise RuntimeError(f"coordinator did not start in {timeout} s:\n{self.log()}")
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base_url + "/api/v1/health", timeout=5).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"coordinator never became healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, exactly what a crash or the OOM killer does."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def admin(self) -> "Api":
        return Api(self.base_url, ADMIN_TOKEN)

    def device(self, token: str) -> "Api":
        return Api(self.base_url, token)

    def blob_files(self) -> list[Path]:
        return sorted(p for p in self.blob_dir.glob("??/*") if p.is_file())

    def staging_files(self) -> list[Path]:
        return sorted((self.blob_dir / "tmp").glob("*"))


_SHARED_SERVERS: dict[str, ServedCoordinator] = {}
_SEEDED_CACHE: list[Path] = []


def seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory) -> Path:
    """An artifact cache holding the session's tiny export under the key the coordinator computes."""
    if _SEEDED_CACHE:
        return _SEEDED_CACHE[0]
    from conftest import tiny_tier

    from coordinator.services.artifacts import artifact_key

    out_dir, _, manifest = tiny_fp32_artifact
    tier = tiny_tier().to_dict()
    assert {k: tier[k] for k in JOB_TIER} == JOB_TIER, "JOB_TIER must describe tests/conftest.py's tiny_tier()"
    cache = tmp_path_factory.mktemp("artifact-cache")
    shutil.copytree(out_dir, cache / artifact_key("tiny", tier))
    _SEEDED_CACHE.append(cache)
    return cache


def shared_server(backend: str, request, tmp_path_factory, artifact_cache: Path) -> ServedCoordinator:
    """The session's coordinator for ``backend`` (started on first use, stopped at session end)."""
    if backend not in _SHARED_SERVERS:
        tmp = tmp_path_factory.mktemp(f"coordinator-{backend}")
        database = new_database(backend, tmp)
        request.config.add_cleanup(database.drop)
        server = ServedCoordinator(database, tmp / "instance", artifact_cache)
        request.config.add_cleanup(server.stop)
        server.start()
        _SHARED_SERVERS[backend] = server
    return _SHARED_SERVERS[backend]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def artifact_cache(tiny_fp32_artifact, tmp_path_factory):
    return seeded_artifact_cache(tiny_fp32_artifact, tmp_path_factory)


@pytest.fixture(scope="module")
def server(backend, request, tmp_path_factory, artifact_cache):
    """A running coordinator over real HTTP on loopback, per backend, shared by the session."""
    return shared_server(backend, request, tmp_path_factory, artifact_cache)


# --- HTTP clients ------------------------------------------------------------------------------

class Api:
    """A tiny HTTP client with a bearer token (what a device or an operator script does)."""

    def __init__(self, base_url: str, token: str | None):
        self.base_url, self.token = base_url, token
        self.http = requests.Session()

    def _headers(self, headers):
        merged = dict(headers or {})
        if self.token is not None:
            merged.setdefault("Authorization", f"Bearer {self.token}")
        return merged

    def get(self, path: str, headers=None, **kwargs) -> requests.Response:
        return self.http.get(self.base_url + path, headers=self._headers(headers), timeout=60, **kwargs)

    def head(self, path: str, headers=None, **kwargs) -> requests.Response:
        return self.http.head(self.base_url + path, headers=self._headers(headers), timeout=60, **kwargs)

    def post(self, path: str, headers=None, **kwargs) -> requests.Response:
        return self.http.post(self.base_url + path, headers=self._headers(headers), timeout=60, **kwargs)

    # operator helpers
    def create_job(self, **fields) -> dict:
        """A tiny job; evaluation is off unless ``eval_examples`` is given, so that a test's row
        counts never change under it from the background evaluation worker."""
        body = {"model": "tiny", "task": "bbcnews", "rounds": 1, "devices_per_round": 2, "min_updates": 2,
                "round_deadline_s": 300, "local_steps": 20, "lr": 0.5, "tier": dict(JOB_TIER), "eval_examples": 0,
                **fields}
        response = self.post("/api/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: int) -> dict:
        response = self.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_job(self, job_id: int, predicate, timeout: float = 120.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if job["status"] == "failed" or time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} never {what or 'got there'}: {json.dumps(job)[:2000]}")
            time.sleep(0.1)

    def running_job(self, **fields) -> dict:
        job = self.create_job(**fields)
        return self.wait_job(job["job_id"], lambda j: j["status"] == "running", what="ran")

    def cancel(self, job_id: int) -> None:
        self.post(f"/api/v1/jobs/{job_id}/cancel")


def register(server: ServedCoordinator, name: str = "phone", capabilities=None, **extra) -> tuple[int, Api]:
    body = {"enrollment_key": ENROLLMENT_KEY, "name": name, "platform": "android-14",
            "capabilities": capabilities or CAPABILITIES, **extra}
    response = requests.post(server.base_url + "/api/v1/devices", json=body, timeout=60)
    assert response.status_code == 201, response.text
    data = response.json()
    return data["device_id"], server.device(data["token"])


@pytest.fixture
def cleanup_jobs(server):
    """Jobs a test creates are cancelled afterwards, so a failed test cannot hold devices of the next."""
    created: list[int] = []
    yield created
    admin = server.admin()
    for job_id in created:
        admin.cancel(job_id)


# --- checks -----------------------------------------------------------------------------------

def assert_error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def fedavg_by_hand(updates: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Example-weighted mean of each tensor, written out longhand: sum(n_i * T_i) / sum(n_i)."""
    total = sum(n for n, _ in updates)
    out = {}
    for key in updates[0][1]:
        acc = np.zeros_like(updates[0][1][key], dtype=np.float64)
        for n, tensors in updates:
            acc = acc + n * tensors[key].astype(np.float64)
        out[key] = (acc / total).astype(np.float32)
    return out


# --- the device side, as a test double -----------------------------------------------------------

class FakeTrainer:
    """A test double for a device's trainer: makes *valid* updates from the manifest, no training.

    ``update(start, seed)`` returns the start adapter plus a small seeded perturbation of
    every LoRA tensor (float32, the manifest's names and shapes), which is what a real device
    uploads after local steps, minus the learning.
    """

    def __init__(self, manifest: dict):
        self.specs = manifest["lora"]["tensors"]

    def update(self, start: dict[str, np.ndarray], seed: int, scale: float = 0.01) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {s["name"]: (start[s["name"]] + scale * rng.standard_normal(s["shape"])).astype(np.float32)
                for s in self.specs}


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata=None) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata or {"format": "pt"})


def load_safetensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(data)


#: A ``meta.metrics`` object as a (simulated) device sends it: every key, one of them null.
DEVICE_METRICS = {"steps": 5, "flops_per_step": 2.5e7, "compute_seconds": 0.42, "achieved_gflops": 0.3,
                  "peak_gflops": 21.5, "flop_utilization": 0.014, "download_seconds": 0.05,
                  "previous_upload_seconds": None, "peak_rss_mb": 812.5, "slowdown": 4.0, "virtual_seconds": 12.75}


def meta(num_examples: int = 16, **overrides) -> dict:
    body = {"num_examples": num_examples, "loss_before": 2.5, "loss_after": 2.1, "train_seconds": 3.5,
            "bytes_downloaded": 1_000_000, "bytes_uploaded": 8_200}
    body.update(overrides)
    return body


def upload(device: Api, task: dict, tensors_or_bytes, meta_body, *, meta_as_file: bool = False) -> requests.Response:
    """POST a result as a device does. A meta given as a dict without ``start_adapter_sha256``
    gets the task's own (what a device sends); a meta given as a string is sent as it is."""
    if isinstance(meta_body, dict) and "start_adapter_sha256" not in meta_body:
        meta_body = {**meta_body, "start_adapter_sha256": task["adapter"]["sha256"]}
    data = tensors_or_bytes if isinstance(tensors_or_bytes, bytes) else safetensors_bytes(tensors_or_bytes)
    files = {"update": ("update.safetensors", data, "application/octet-stream")}
    form = {}
    meta_text = meta_body if isinstance(meta_body, str) else json.dumps(meta_body)
    if meta_as_file:
        files["meta"] = ("meta.json", meta_text.encode(), "application/json")
    else:
        form["meta"] = meta_text
    return device.post(task["upload"]["url"], files=files, data=form)


def manifest_of(device: Api, task: dict) -> dict:
    response = device.get(task["artifact"]["url"])
    assert response.status_code == 200, response.text
    return response.json()


def start_adapter(admin: Api, job_id: int, round_number: int) -> dict[str, np.ndarray]:
    """The global adapter a round starts from (the PEFT safetensors inside the zip)."""
    import io
    import zipfile

    response = admin.get(f"/api/v1/jobs/{job_id}/adapter", params={"round": round_number})
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return load_safetensors(archive.read("adapter_model.safetensors"))


def record_measurement(name: str, value: dict) -> None:
    """Print a measured figure (shown with ``-s``) and add it to $POCKETTUNE_MEASUREMENTS if set."""
    value = {**value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"\nMEASURED {name}: {json.dumps(value, sort_keys=True)}")
    target = os.environ.get(MEASUREMENTS_ENV)
    if target:
        path = Path(target)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = value
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def add_global_adapter(state, job_id: int, round_number: int, tensors, config_sha256: str | None = None) -> str:
    """Store ``tensors`` as job ``job_id``'s global adapter after ``round_number`` through an
    in-process app's state (``config_sha256`` defaults to the weights' own); returns the weights' sha256."""
    from coordinator.models import GlobalAdapter, utcnow

    weights, ptd = state.adapters.store(tensors)
    with state.db.write() as session:
        session.add(GlobalAdapter(job_id=job_id, round=round_number, config_sha256=config_sha256 or weights.sha256,
                                  weights_sha256=weights.sha256, weights_size=weights.size, ptd_sha256=ptd.sha256,
                                  ptd_size=ptd.size, num_updates=1, num_examples=1, strategy="fedavg",
                                  created_at=utcnow()))
    return weights.sha256
