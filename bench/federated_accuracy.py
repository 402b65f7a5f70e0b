"""Federated accuracy against its bounds: zero-shot (lower) and centralized LoRA (upper).

Runs, in one go and on the same model, tier, data and example budget:

- **federated, IID** and **federated, Dirichlet(alpha)**: a simulated fleet (``fleet.simulator``)
  training the real ExecuTorch program against a real coordinator, which evaluates every
  global adapter on the fixed held-out subset (round 0 = zero-shot);
- **centralized**: the same LoRA trained by SGD on the union of the devices' data, seeing as
  many examples as the whole federation aggregated (rounds x updates per round x local
  steps x batch), with the same learning rate and momentum, in eager PyTorch: the exported program computes the same gradients (tests check
  1e-5), and eager is 3x faster here, which keeps this bound affordable. It is evaluated
  after each round's worth of examples.

Writes ``<out>/results.json`` and PNG plots (accuracy against round and against the virtual
clock); ``docs/results.md`` quotes them with this command line.

    python bench/federated_accuracy.py --model smollm2-135m --devices 10 --rounds 5 --out docs/results
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def federated(args, partition: str, workdir: Path, cache: Path) -> dict:
    from fleet.local_coordinator import LocalCoordinator
    from fleet.simulator import FleetSimulation, FleetSpec, format_report
    from pockettune.demo import DEMO_JOB

    job = {**DEMO_JOB, "model": args.model, "local_steps": args.local_steps, "lr": args.lr}
    if args.eval_examples is not None:
        job["eval_examples"] = args.eval_examples
    job.pop("task")
    spec = FleetSpec(devices=args.devices, fleet=args.profile, rounds=args.rounds, task="bbcnews",
                     partition=partition, seed=args.seed, dropout=args.dropout, workers=args.workers,
                     devices_per_round=args.devices_per_round, min_updates=args.min_updates,
                     round_deadline_s=args.round_deadline, job=job)
    with LocalCoordinator(workdir, artifact_cache=cache, extra_args=["--tick", "0.5"]) as coordinator:
        sim = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key,
                              workdir, progress=True)
        report = sim.run(timeout_s=3 * 3600)
    print(f"\nfederated, {partition}:\n{format_report(report)}\n", flush=True)
    return report


def centralized(args, budget_per_round: int) -> list[dict]:
    """Eager SGD on the pooled training data, evaluated after each round's worth of examples."""
    import torch

    from export.pipeline import build_training_model
    from export.verify import train_eager
    from models.registry import load_base_model
    from models.intervals import formatted
    from models.tasks import get_task
    from models.tier import Tier
    from pockettune.demo import DEMO_JOB

    torch.manual_seed(args.seed)
    task = get_task("bbcnews")
    tier_fields = {**Tier().to_dict(), **DEMO_JOB["tier"]}
    tier = Tier.from_dict(tier_fields)
    base = load_base_model(args.model)
    model = build_training_model(base, tier).peft_model
    examples = task.examples("train")
    random.Random(args.seed).shuffle(examples)
    evaluation = task.eval_examples(args.eval_examples)
    points = [{"round": 0, **task.evaluate(model, base.tokenizer, evaluation, tier.seq)}]
    per_step = tier.batch
    for round_number in range(1, args.rounds + 1):
        start = (round_number - 1) * budget_per_round
        chunk = [examples[(start + i) % len(examples)] for i in range(budget_per_round)]
        batches = task.batches(base.tokenizer, chunk, tier.batch, tier.seq)
        started = time.perf_counter()
        train_eager(model, batches, len(batches), args.lr, momentum=tier.train.momentum)
        points.append({"round": round_number, "train_seconds": time.perf_counter() - started,
                       **task.evaluate(model, base.tokenizer, evaluation, tier.seq)})
        print(f"centralized after {round_number * budget_per_round // per_step} steps: accuracy "
              f"{formatted(points[-1]['value'], points[-1].get('ci95'), 'accuracy')} "
              f"on {points[-1]['num_examples']} held-out articles", flush=True)
    return points


def plot(results: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    zero = results["centralized"][0]["value"]
    central = results["centralized"]
    for xkey, xlabel, name in (("round", "round", "accuracy_by_round.png"),
                               ("virtual", "virtual time (s, simulated device hardware)", "accuracy_by_virtual_time.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for label, report in results["federated"].items():
            xs, ys, clock = [0.0], [report["initial_evaluation"]["value"]], 0.0
            for r in report["rounds"]:
                clock += r["virtual_seconds"] or 0.0
                xs.append(r["round"] if xkey == "round" else clock)
                ys.append(r["value"])
            ax.plot(xs, ys, marker="o", label=f"federated, {label}")
        if xkey == "round":
            ax.plot([p["round"] for p in central], [p["value"] for p in central], marker="s", linestyle="--",
                    label="centralized LoRA (same examples)")
        else:
            ax.axhline(central[-1]["value"], linestyle="--", color="gray", label="centralized LoRA, final")
        ax.axhline(zero, linestyle=":", color="black", label="zero-shot")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (BBC News, 5 topics)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    from fleet.cli import FLEETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=None, help="default: the demo's")
    parser.add_argument("--lr", type=float, default=None, help="default: the demo's")
    parser.add_argument("--profile", choices=sorted(FLEETS), default="mixed")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the non-IID run")
    parser.add_argument("--devices-per-round", type=int, default=5)
    parser.add_argument("--min-updates", type=int, default=4)
    parser.add_argument("--round-deadline", type=float, default=900.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="held-out articles scored per adapter (default: the whole held-out split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("iid", "dirichlet", "centralized"), action="append",
                        help="run only these parts (repeatable; default all)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    args = parser.parse_args(argv)
    from pockettune.cli import quiet_library_chatter
    from pockettune.demo import DEMO_JOB

    quiet_library_chatter()
    args.local_steps = args.local_steps or DEMO_JOB["local_steps"]
    args.lr = args.lr or DEMO_JOB["lr"]
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.only or ["iid", "dirichlet", "centralized"]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("federated", {})
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    run_root = Path("runs") / "federated_accuracy"
    cache = run_root / "artifact-cache"
    cache.mkdir(parents=True, exist_ok=True)
    # The federation aggregates min_updates updates a round (at most devices_per_round).
    per_round = args.min_updates or args.devices_per_round or args.devices
    if "iid" in parts:
        results["federated"]["iid"] = federated(args, "iid", run_root / "iid", cache)
    if "dirichlet" in parts:
        label = f"dirichlet:{args.alpha:g}"
        results["federated"][label] = federated(args, label, run_root / "dirichlet", cache)
    if "centralized" in parts:
        budget = per_round * args.local_steps * DEMO_JOB["tier"]["batch"]
        results["centralized"] = centralized(args, budget)
    for report in results["federated"].values():
        report.pop("outcomes", None)    # per-task detail stays in the run folders
    results_path.write_text(json.dumps(results, indent=2))
    if results.get("centralized") and results["federated"]:
        for path in plot(results, args.out):
            print(f"plot: {path}")
    summary = {"zero-shot": results.get("centralized", [{}])[0].get("value"),
               "centralized": (results.get("centralized") or [{}])[-1].get("value"),
               **{f"federated {k}": v["rounds"][-1]["value"] for k, v in results["federated"].items()}}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
