"""Heterogeneity-aware tuning against the uniform baseline, on one simulated fleet.

Runs the same fleet (profiles, shards, dropout, seed) once per configurator: ``uniform``
(every device the job's tier), ``legend`` (LoRA depth and rising ranks sized to each
device) and ``fedspine`` (a bandit per device over pruning ratio and rank), each against a
real coordinator that exports the tiers, cuts and lifts adapters, and aggregates with the
chosen strategy. Reports, per configurator: virtual time to the target accuracy, final
accuracy, and bytes uploaded and downloaded; writes ``<out>/heterogeneity.json`` and plots.

The virtual clock is the simulator's (``fleet/simulator.py``): each task costs its transfers
at the device's bandwidth plus its measured compute times its profile's slowdown, and a
round lasts as long as its slowest accepted device. ``--realtime-factor`` makes devices
sleep out part of their profile so that the updates a round accepts follow virtual order.

    python bench/heterogeneity.py --model smollm2-135m --devices 20 --rounds 8 --out docs/heterogeneity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGURATORS = ("uniform", "legend", "fedspine")
#: The job's (reference) tier: the demo's, int8 SmolLM2 with LoRA on the last 4 layers.
REFERENCE_TIER = {"lora_rank": 8, "lora_layers": 4, "quantize": "int8", "batch": 4, "seq": 64}
CONFIGURATOR_OPTIONS = {
    "uniform": {},
    "legend": {"depths": [1, 2, 4]},
    "fedspine": {"prune_ratios": [0.0, 0.25, 0.5], "ranks": [4, 8]},
}


def run_fleet(args, configurator: str, workdir: Path, cache: Path) -> dict:
    from fleet.local_coordinator import LocalCoordinator
    from fleet.simulator import FleetSimulation, FleetSpec, format_report

    job = {"model": args.model, "tier": dict(args.tier), "local_steps": args.local_steps, "lr": args.lr,
           "eval_examples": args.eval_examples, "strategy": args.strategy, "configurator": configurator,
           "configurator_options": CONFIGURATOR_OPTIONS[configurator], "prepare_tiers": "all"}
    spec = FleetSpec(devices=args.devices, fleet=args.profile, rounds=args.rounds, task="bbcnews",
                     partition=f"dirichlet:{args.alpha:g}", seed=args.seed, dropout=args.dropout,
                     workers=args.workers, devices_per_round=args.devices_per_round, min_updates=args.min_updates,
                     round_deadline_s=args.round_deadline, realtime_factor=args.realtime_factor, job=job)
    with LocalCoordinator(workdir, artifact_cache=cache, extra_args=["--tick", "0.5"]) as coordinator:
        sim = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key,
                              workdir, progress=not args.no_progress)
        report = sim.run(timeout_s=6 * 3600)
    print(f"\n{configurator}:\n{format_report(report)}\n", flush=True)
    return report


def summarize(report: dict, target: float) -> dict:
    """Virtual seconds to the first round at or above ``target``, final accuracy, bytes moved."""
    clock, reached = 0.0, None
    curve = [(0.0, report["initial_evaluation"]["value"])]
    for r in report["rounds"]:
        clock += r["virtual_seconds"] or 0.0
        curve.append((clock, r["value"]))
        if reached is None and r["value"] is not None and r["value"] >= target:
            reached = clock
    arms: dict[str, int] = {}
    for outcome in report["outcomes"]:
        arms[outcome.get("arm") or "reference"] = arms.get(outcome.get("arm") or "reference", 0) + 1
    return {"virtual_seconds_to_target": reached, "final_accuracy": curve[-1][1],
            "virtual_seconds_total": clock, "curve": curve,
            "bytes_uploaded": sum(r["bytes_up"] for r in report["rounds"]),
            "bytes_downloaded": sum(r["bytes_down"] for r in report["rounds"]), "arms": arms}


def plot(summaries: dict, target: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, summary in summaries.items():
        xs, ys = zip(*summary["curve"])
        ax.plot(xs, ys, marker="o", label=name)
    ax.axhline(target, linestyle=":", color="black", label=f"target {target:.0%}")
    ax.set_xlabel("virtual time (s, simulated device hardware)")
    ax.set_ylabel("held-out accuracy (BBC News, 5 topics)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / "accuracy_by_virtual_time.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    from fleet.cli import FLEETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tier", type=json.loads, default=REFERENCE_TIER, metavar="JSON",
                        help=f"the job's reference tier (default {json.dumps(REFERENCE_TIER)})")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--strategy", default="fedavg", help="aggregation for every run (fedavg, hetlora, flexlora)")
    parser.add_argument("--profile", choices=sorted(FLEETS), default="mixed")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the topic shards")
    parser.add_argument("--devices-per-round", type=int, default=10)
    parser.add_argument("--min-updates", type=int, default=8)
    parser.add_argument("--round-deadline", type=float, default=1800.0)
    parser.add_argument("--realtime-factor", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--target", type=float, default=None,
                        help="target accuracy (default: the uniform run's final accuracy minus 1 point)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=CONFIGURATORS, action="append", help="run only these (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "heterogeneity")
    args = parser.parse_args(argv)

    from pockettune.cli import quiet_library_chatter

    quiet_library_chatter()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "heterogeneity.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("reports", {})
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    run_root = Path("runs") / "heterogeneity"
    cache = run_root / "artifact-cache"
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.only or CONFIGURATORS:
        results["reports"][name] = run_fleet(args, name, run_root / name, cache)
        results_path.write_text(json.dumps(results, indent=1))
    reports = results["reports"]
    if "uniform" not in reports:
        print("no uniform run to compare with; run it first (--only uniform)")
        return 0
    target = args.target if args.target is not None else reports["uniform"]["rounds"][-1]["value"] - 0.01
    summaries = {name: summarize(report, target) for name, report in reports.items()}
    base = summaries["uniform"]["virtual_seconds_to_target"]
    for name, summary in summaries.items():
        mine = summary["virtual_seconds_to_target"]
        summary["speedup_to_target_vs_uniform"] = (base / mine) if (base and mine) else None
    results.update(target=target, summaries=summaries)
    results_path.write_text(json.dumps(results, indent=1))
    plot(summaries, target, args.out)
    print(f"target accuracy {target:.3f}")
    print(f"{'configurator':>12} {'to target (virtual s)':>22} {'speedup':>8} {'final':>6} {'MB up':>7} {'MB down':>8}")
    for name, s in summaries.items():
        to_target = f"{s['virtual_seconds_to_target']:.0f}" if s["virtual_seconds_to_target"] else "not reached"
        speedup = f"{s['speedup_to_target_vs_uniform']:.2f}x" if s["speedup_to_target_vs_uniform"] else "-"
        print(f"{name:>12} {to_target:>22} {speedup:>8} {s['final_accuracy']:>6.3f} "
              f"{s['bytes_uploaded'] / 1e6:>7.2f} {s['bytes_downloaded'] / 1e6:>8.1f}")
    print(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
