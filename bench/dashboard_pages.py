"""Dashboard page times with a fleet's worth of history: 1,000 devices, a job of 100 rounds.

Seeds a fresh coordinator database (SQLite by default, or ``--db`` for PostgreSQL) with
devices, a 100-round job whose rounds each had ``--per-round`` devices (accepted results
with device metrics, some refused uploads, an evaluation per round), then asks every
dashboard page for its HTML through the coordinator's real WSGI app, in-process (the
network adds the same few hundred microseconds to every page and is left out). Each page
is requested ``--repeat`` times after a warm-up; the median and the slowest are printed,
and the median's ratio to ``GET /api/v1/health`` measured in the same run (the cheapest
request the app serves: what the framework alone costs on this machine right now).

The goal (issue: dashboard) is every page under 200 ms at this size.

    python bench/dashboard_pages.py                       # 1,000 devices, 100 rounds, 50 per round
    python bench/dashboard_pages.py --json docs/dashboard/pages.json
    python bench/dashboard_pages.py --db postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_MS = 200.0
TIER = {"prune_ratio": 0.0, "lora_rank": 8, "lora_layers": 4, "quantize": "int8", "batch": 4, "seq": 64}
ARMS = ("p0-r8", "p0.25-r8", "p0.5-r8", "p0.5-r4")
REJECTION_CODES = (("late", 409, "round 7 reached its deadline; the result came too late"),
                   ("non_finite", 422, "tensor base_model.model.model.layers.29.self_attn.q_proj.lora_A.weight "
                                       "has 3 non-finite value(s) (NaN or infinity)"),
                   ("norm_exceeded", 422, "the update's change from the start adapter has L2 norm 412.5, over "
                                          "the job's bound 100"))


def evaluation_row(job_id: int, number: int, correct: int, loss: float, created_at, examples: int = 100) -> dict:
    """An evaluation as the coordinator writes one: accuracy over ``examples`` held-out articles
    with its 95% Wilson interval, so the pages render (and are timed with) the interval too."""
    from models.intervals import accuracy_interval

    low, high = accuracy_interval(correct, examples)
    return {"job_id": job_id, "round": number, "metric": "accuracy", "value": correct / examples,
            "ci_low": low, "ci_high": high, "loss": loss, "num_examples": examples, "seconds": 30.0,
            "created_at": created_at}


def seed(db, devices: int, rounds: int, per_round: int, seed_value: int = 0) -> dict:
    """Insert a fleet and a finished ``rounds``-round job (plus one running job) in bulk."""
    from sqlalchemy import insert

    from coordinator.models import (Device, Evaluation, Job, JobStatus, Rejection, Round, RoundStatus, Task,
                                    TaskStatus, Update, utcnow)

    rng = random.Random(seed_value)
    start = utcnow() - timedelta(days=2)
    profiles = (("budget", 2048, 4, 15.0, 2.0), ("midrange", 6144, 8, 50.0, 20.0), ("flagship", 12288, 8, 150.0, 50.0))
    with db.write() as session:
        device_rows = []
        for i in range(devices):
            name, ram, cores, gflops, mbps = profiles[i % 3]
            device_rows.append({"id": i + 1, "name": f"phone-{i + 1:04d}-{name}", "platform": "android-14",
                                "token_sha256": f"{i + 1:064x}", "registered_at": start,
                                "last_seen_at": utcnow() - timedelta(seconds=rng.uniform(0, 600)),
                                "battery": rng.uniform(0.1, 1.0), "charging": rng.random() < 0.5,
                                "capabilities": {"ram_mb": ram, "cores": cores, "gflops": gflops,
                                                 "bandwidth_mbps": mbps, "runtimes": ["executorch"]}})
        session.execute(insert(Device), device_rows)
        jobs = [{"id": 1, "name": "SmolLM2 news, fedspine", "status": JobStatus.COMPLETED, "rounds": rounds},
                {"id": 2, "name": "SmolLM2 news, uniform", "status": JobStatus.RUNNING, "rounds": rounds}]
        session.execute(insert(Job), [{
            **job, "model": "smollm2-135m", "task": "bbcnews", "tier": TIER, "devices_per_round": per_round,
            "min_updates": per_round - 5, "round_deadline_s": 1800.0, "local_steps": 5, "lr": 0.1,
            "strategy": "flexlora", "max_update_norm": 100.0, "eval_examples": 100, "configurator": "fedspine",
            "prepare_tiers": "all", "created_at": start, "updated_at": start} for job in jobs])
        round_rows, task_rows, update_rows, rejection_rows, evaluation_rows = [], [], [], [], []
        round_id = task_id = 0
        for job_id, job_rounds in ((1, rounds), (2, 3)):
            evaluation_rows.append(evaluation_row(job_id, 0, correct=25, loss=3.1, created_at=start))
            for number in range(1, job_rounds + 1):
                round_id += 1
                opened = start + timedelta(minutes=20 * (number - 1) + 600 * (job_id - 1))
                last = job_id == 2 and number == job_rounds
                round_rows.append({"id": round_id, "job_id": job_id, "number": number,
                                   "status": RoundStatus.OPEN if last else RoundStatus.CLOSED, "opened_at": opened,
                                   "deadline_at": opened + timedelta(minutes=30),
                                   "frozen_at": None if last else opened + timedelta(minutes=15),
                                   "closed_at": None if last else opened + timedelta(minutes=15),
                                   "close_reason": None if last else "min_updates", "num_updates": per_round - 5})
                if not last:
                    accuracy = min(0.9, 0.25 + 0.6 * number / rounds + rng.uniform(-.02, .02))
                    evaluation_rows.append(evaluation_row(job_id, number, correct=round(accuracy * 100),
                                                          loss=3.0 - 2 * number / rounds,
                                                          created_at=opened + timedelta(minutes=16)))
                for device_id in rng.sample(range(1, devices + 1), per_round):
                    task_id += 1
                    arm = rng.choice(ARMS)
                    accepted = rng.random() < 0.9
                    task_rows.append({"id": task_id, "round_id": round_id, "device_id": device_id,
                                      "status": TaskStatus.SUBMITTED if accepted else TaskStatus.ASSIGNED,
                                      "assigned_at": opened, "submitted_at": opened + timedelta(minutes=9)
                                      if accepted else None, "arm": arm, "local_steps": 5, "artifact_id": None,
                                      "tier": {**TIER, "prune_ratio": float(arm.split("-")[0][1:])}})
                    if accepted:
                        compute = rng.uniform(20, 400)
                        update_rows.append({
                            "task_id": task_id, "round_id": round_id, "device_id": device_id,
                            "sha256": f"{task_id:064x}", "size": 250_000, "num_examples": 20,
                            "loss_before": rng.uniform(1, 3), "loss_after": rng.uniform(0.5, 2),
                            "train_seconds": compute + 2, "bytes_downloaded": 250_000 + (300_000_000 if number == 1
                                                                                          else 0),
                            "bytes_uploaded": 250_000, "delta_norm": rng.uniform(0.5, 5),
                            "received_at": opened + timedelta(minutes=9),
                            "metrics": {"steps": 6, "compute_seconds": compute, "flop_utilization":
                                        rng.uniform(0.05, 0.15), "flops_per_step": 9.2e10,
                                        "achieved_gflops": 5.0, "peak_gflops": 50.0, "download_seconds": 1.0,
                                        "peak_rss_mb": 900.0, "slowdown": 1.0, "virtual_seconds": compute * 3}})
                    elif rng.random() < 0.5:
                        code, status, message = rng.choice(REJECTION_CODES)
                        rejection_rows.append({"task_id": task_id, "round_id": round_id, "device_id": device_id,
                                               "code": code, "message": message, "status": status,
                                               "size": 250_000, "received_at": opened + timedelta(minutes=10)})
        for model, rows in ((Round, round_rows), (Task, task_rows), (Update, update_rows),
                            (Rejection, rejection_rows), (Evaluation, evaluation_rows)):
            for i in range(0, len(rows), 2000):
                session.execute(insert(model), rows[i:i + 2000])
    return {"devices": devices, "rounds": len(round_rows), "tasks": len(task_rows), "updates": len(update_rows),
            "rejections": len(rejection_rows)}


def time_pages(client, pages: dict[str, str], repeat: int) -> dict[str, dict]:
    results = {}
    for name, url in pages.items():
        response = client.get(url)  # warm-up (templates compiled, caches filled)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}: {response.get_data(as_text=True)[:500]}")
        samples = []
        for _ in range(repeat):
            began = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200
        results[name] = {"url": url, "median_ms": statistics.median(samples), "max_ms": max(samples),
                         "bytes": len(response.get_data())}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=50, help="devices given a task in each round")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per page")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL of an EMPTY database (default: a temporary "
                                                    "SQLite file)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.devices < args.per_round or min(args.devices, args.rounds, args.per_round, args.repeat) < 1:
        parser.error("need --devices >= --per-round >= 1, --rounds >= 1 and --repeat >= 1")

    from coordinator.app import create_app

    with tempfile.TemporaryDirectory(prefix="pockettune-dashboard-bench-") as tmp:
        app = create_app({"INSTANCE_PATH": tmp, "BACKGROUND": False, "DATABASE": args.db})
        state = app.extensions["pockettune"]
        began = time.perf_counter()
        sizes = seed(state.db, args.devices, args.rounds, args.per_round)
        print(f"seeded {sizes} in {time.perf_counter() - began:.1f} s ({state.db.display_url})")
        client = app.test_client()
        pages = {"health (baseline)": "/api/v1/health", "overview": "/", "fleet": "/devices", "jobs": "/jobs",
                 f"job ({args.rounds} rounds)": "/jobs/1", "round": f"/jobs/1/rounds/{max(1, args.rounds // 2)}",
                 "running job": "/jobs/2", "open round": "/jobs/2/rounds/3", "login": "/login"}
        results = time_pages(client, pages, args.repeat)
        state.db.engine.dispose()
    baseline = results["health (baseline)"]["median_ms"]
    print(f"\n{'page':<22} {'median ms':>10} {'max ms':>8} {'x health':>9} {'KB':>7}  goal < {GOAL_MS:.0f} ms")
    worst = 0.0
    for name, r in results.items():
        ok = "" if name.startswith("health") else ("ok" if r["median_ms"] < GOAL_MS else "OVER")
        if not name.startswith("health"):
            worst = max(worst, r["median_ms"])
        print(f"{name:<22} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f} {r['median_ms'] / baseline:>9.1f} "
              f"{r['bytes'] / 1000:>7.1f}  {ok}")
    print(f"\nslowest page median: {worst:.1f} ms = {worst / GOAL_MS:.2f} of the {GOAL_MS:.0f} ms goal")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "settings": {k: v for k, v in vars(args).items() if k != "json"}, "seeded": sizes,
            "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
            "goal_ms": GOAL_MS, "pages": results, "slowest_median_ms": worst}, indent=1) + "\n")
    return 0 if worst < GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
