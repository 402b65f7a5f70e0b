"""Heterogeneity-aware tuning against the uniform baseline, on one simulated fleet.

Runs the same fleet (profiles, shards, dropout, seed) once per configurator: ``uniform``
(every device the job's tier), ``legend`` (LoRA depth and rising ranks sized to each
device) and ``fedspine`` (a bandit per device over pruning ratio and rank), each against a
real coordinator that exports the tiers, cuts and lifts adapters, and aggregates with the
chosen strategy. Reports, per configurator: virtual time to the target accuracy, final
accuracy with its 95% interval over the held-out articles (Wilson, the coordinator's), and
bytes uploaded and downloaded; writes ``<out>/heterogeneity.json`` and plots.

The virtual clock is the simulator's (``fleet/simulator.py``, ``fleet/virtual_clock.py``):
each task costs its transfers at the device's link plus its counted FLOPs at the profile's
calibrated sustained rate (nothing measured on the host), a round accepts results in virtual
finish order, and it lasts until its last accepted result (or its virtual deadline).

    python bench/heterogeneity.py --model smollm2-135m --devices 20 --rounds 5 --out docs/heterogeneity
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGURATORS = ("uniform", "legend", "fedspine")
#: The job's (reference) tier: the demo's, int8 SmolLM2 with LoRA r8 on the last 4 layers.
REFERENCE_TIER = {"prune_ratio": 0.0, "lora_rank": 8, "lora_layers": 4, "quantize": "int8", "batch": 4, "seq": 64,
                  "train": {"momentum": 0.5}}
#: Few arms on purpose: each device takes part in about five rounds here, and a bandit with
#: more arms than a device has tasks never leaves exploration (FedSpine ran hundreds of rounds).
CONFIGURATOR_OPTIONS = {
    "uniform": {},
    "legend": {"depths": [2, 4], "slack": 2.0, "min_steps": 2},
    "fedspine": {"prune_ratios": [0.0, 0.5], "ranks": [8], "monotone_pruning": False},
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
                     round_deadline_s=args.round_deadline, job=job)
    with LocalCoordinator(workdir, artifact_cache=cache, extra_args=["--tick", "0.5"]) as coordinator:
        sim = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key,
                              workdir, progress=not args.no_progress)
        report = sim.run(timeout_s=6 * 3600)
    print(f"\n{configurator}:\n{format_report(report)}\n", flush=True)
    return report


def steady_round_seconds(report: dict, number: int) -> float:
    """A round's virtual length without one-off artifact downloads (artifacts fetched ahead of time).

    Each accepted task's virtual seconds minus its artifact bytes at its profile's bandwidth;
    the round lasts as long as the slowest of them.
    """
    from fleet.profiles import PROFILES

    times = [o["virtual_seconds"] - o.get("artifact_bytes_down", 0) * 8 / (PROFILES[o["profile"]].bandwidth_mbps * 1e6)
             for o in report["outcomes"] if o["round"] == number and o["status"] == "accepted"]
    return max(times, default=0.0)


def summarize(report: dict, target: float) -> dict:
    """Virtual seconds to the first round at or above ``target`` (with and without one-off
    artifact downloads), final and best accuracy with their 95% intervals (``*_ci95``, from the
    coordinator's evaluations; ``curve_ci95`` for each curve point), bytes moved, and how often
    each arm was handed out."""
    clocks = {"virtual": 0.0, "steady": 0.0}
    reached: dict[str, float | None] = {"virtual": None, "steady": None}
    initial = report["initial_evaluation"]
    curves = {name: [(0.0, initial["value"])] for name in clocks}
    intervals = [initial.get("ci95")]       # the 95% interval of each curve point (both clocks share them)
    for r in report["rounds"]:
        clocks["virtual"] += r["virtual_seconds"] or 0.0
        clocks["steady"] += steady_round_seconds(report, r["round"])
        intervals.append(r.get("ci95"))
        for name in clocks:
            curves[name].append((clocks[name], r["value"]))
            if reached[name] is None and r["value"] is not None and r["value"] >= target:
                reached[name] = clocks[name]
    final = report["rounds"][-1]
    best = max((r for r in report["rounds"] if r["value"] is not None), key=lambda r: r["value"], default=final)
    arms: dict[str, int] = {}
    for outcome in report["outcomes"]:
        arm = f"{outcome['profile']}:{outcome.get('arm') or 'reference'}"
        arms[arm] = arms.get(arm, 0) + 1
    return {"virtual_seconds_to_target": reached["virtual"], "steady_seconds_to_target": reached["steady"],
            "final_accuracy": final["value"], "final_accuracy_ci95": final.get("ci95"),
            "best_accuracy": best["value"], "best_accuracy_ci95": best.get("ci95"),
            "virtual_seconds_total": clocks["virtual"], "steady_seconds_total": clocks["steady"],
            "curve": curves["virtual"], "steady_curve": curves["steady"], "curve_ci95": intervals,
            "bytes_uploaded": sum(r["bytes_up"] for r in report["rounds"]),
            "bytes_downloaded": sum(r["bytes_down"] for r in report["rounds"]), "arms": dict(sorted(arms.items()))}


def plot(summaries: dict, target: float, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, xlabel, name in (
            ("curve", "virtual time (s): transfers at each link's speed + counted FLOPs at the profile's rate",
             "accuracy_by_virtual_time.png"),
            ("steady_curve", "virtual time (s) without one-off artifact downloads", "accuracy_by_steady_time.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for label, summary in summaries.items():
            xs, ys = zip(*summary[key])
            bands = summary.get("curve_ci95") or []
            if len(bands) == len(ys) and all(bands) and None not in ys:     # 95% intervals as error bars
                yerr = [[y - band[0] for y, band in zip(ys, bands)], [band[1] - y for y, band in zip(ys, bands)]]
                ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)
            else:
                ax.plot(xs, ys, marker="o", label=label)
        ax.axhline(target, linestyle=":", color="black", label=f"target {target:.0%}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (BBC News, 5 topics), 95% interval")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


TABLE_HEADER = (f"{'configurator':>12} {'to target, virtual s':>21} {'speedup':>8} {'steady s':>9} {'speedup':>8} "
                f"{'final accuracy [95% CI]':>23} {'MB up':>7} {'MB down':>8}")


def table_row(name: str, s: dict) -> str:
    """One configurator's line of the final table (``s``: its :func:`summarize` entry), the final
    accuracy with its 95% interval over the held-out articles (Wilson) when the report has one."""
    from models.intervals import formatted

    def seconds(value):
        return f"{value:.0f}" if value else "not reached"

    def ratio(value):
        return f"{value:.2f}x" if value else "-"

    final = formatted(s["final_accuracy"], s.get("final_accuracy_ci95"), "accuracy")
    return (f"{name:>12} {seconds(s['virtual_seconds_to_target']):>21} {ratio(s['virtual_speedup_vs_uniform']):>8} "
            f"{seconds(s['steady_seconds_to_target']):>9} {ratio(s['steady_speedup_vs_uniform']):>8} "
            f"{final:>23} {s['bytes_uploaded'] / 1e6:>7.2f} {s['bytes_downloaded'] / 1e6:>8.1f}")


def main(argv=None) -> int:
    from fleet.cli import FLEETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tier", type=json.loads, default=REFERENCE_TIER, metavar="JSON",
                        help=f"the job's reference tier (default {json.dumps(REFERENCE_TIER)})")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--strategy", default="fedavg", help="aggregation for every run (fedavg, zero_padding, hetlora, flexlora, fedavgm)")
    parser.add_argument("--profile", choices=sorted(FLEETS), default="mixed")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the topic shards")
    parser.add_argument("--devices-per-round", type=int, default=20)
    parser.add_argument("--min-updates", type=int, default=16)
    parser.add_argument("--round-deadline", type=float, default=1800.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--target", type=float, default=None,
                        help="target accuracy (default: the uniform run's final accuracy minus 1 point)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=CONFIGURATORS, action="append", help="run only these (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "heterogeneity")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "heterogeneity",
                        help="work folders and the shared artifact cache (exports happen once across runs)")
    args = parser.parse_args(argv)

    from models.console import quiet_library_chatter

    quiet_library_chatter()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "heterogeneity.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("reports", {})
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    run_root = args.runs
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
    for clock in ("virtual", "steady"):
        base = summaries["uniform"][f"{clock}_seconds_to_target"]
        for summary in summaries.values():
            mine = summary[f"{clock}_seconds_to_target"]
            summary[f"{clock}_speedup_vs_uniform"] = (base / mine) if (base and mine) else None
    results.update(target=target, summaries=summaries)
    results_path.write_text(json.dumps(results, indent=1))
    plot(summaries, target, args.out)
    source = "--target" if args.target is not None else "the uniform run's final accuracy minus 1 point"
    print(f"target accuracy {target:.3f} (a threshold: {source})")
    print(TABLE_HEADER)
    for name, s in summaries.items():
        print(table_row(name, s))
    print(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
