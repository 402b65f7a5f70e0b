"""Accuracy against epsilon on the trusted harness: client-level DP-FedAvg (central or local noise)
at target epsilons, against the same FedAvg job without privacy, one invocation.

Every arm is bench/federated_accuracy.py's FedAvg job (the same fleet, tier, Dirichlet shards,
dropout draws and held-out evaluation) with a ``privacy`` setting (docs/privacy.md). An arm
``central:8`` asks for epsilon 8 at ``--delta`` after ``--rounds`` released rounds: its noise
multiplier is the smallest z whose accounted epsilon (coordinator/privacy/accountant.py,
dp-accounting's RDP accountant) is at most 8. The clip norm C is ``--clip-norm``, or by
default the median change length of the non-private run's updates of the same seed (a choice
made on the same data, stated with the results: a deployment would fix C beforehand or spend
privacy choosing it).

Per arm: final held-out accuracy (mean over seeds with a t interval), its difference from the
non-private run per seed, the epsilon the coordinator reports at the end, z and C. Writes
``<out>/results.json``, ``<out>/summary.json`` and a plot of accuracy against epsilon::

    python bench/privacy.py --out docs/privacy
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARMS = "none,central:8,central:4,central:1"


def parse_arm(text: str) -> dict | None:
    """``none`` -> None; ``central:8`` -> {"mode": "central", "epsilon": 8.0}."""
    text = text.strip()
    if text == "none":
        return None
    mode, _, epsilon = text.partition(":")
    if mode not in ("central", "local") or not epsilon:
        raise ValueError(f"an arm is none, central:<epsilon> or local:<epsilon>, got {text!r}")
    value = float(epsilon)
    if not value > 0:
        raise ValueError(f"epsilon must be positive, got {text!r}")
    return {"mode": mode, "epsilon": value}


def label_of(arm: dict | None) -> str:
    return "none" if arm is None else f"{arm['mode']}:{arm['epsilon']:g}"


def noise_for(epsilon: float, rounds: int, delta: float, mode: str) -> float:
    """The smallest noise multiplier (to 0.5%) whose epsilon after ``rounds`` is at most ``epsilon``."""
    from coordinator.privacy.accountant import epsilon_after
    from coordinator.privacy.settings import PrivacySettings

    def spent(z: float) -> float:
        return epsilon_after(rounds, PrivacySettings(mode=mode, clip_norm=1.0, noise_multiplier=z, delta=delta))

    low, high = 0.05, 1.0
    while spent(high) > epsilon:
        low, high = high, high * 2
    while high / low > 1.005:
        middle = (low * high) ** 0.5
        low, high = (low, middle) if spent(middle) <= epsilon else (middle, high)
    return high


def median_change(coordinator, job_id: int) -> float:
    """The median change length (``delta_norm``) of a finished job's accepted updates."""
    from fleet.transport import CoordinatorClient

    admin = CoordinatorClient(coordinator.base_url, coordinator.admin_token)
    job = admin.json("GET", f"api/v1/jobs/{job_id}")
    norms = []
    for entry in job["round_history"]:
        detail = admin.json("GET", f"api/v1/jobs/{job_id}/rounds/{entry['round']}")
        norms += [t["update"]["delta_norm"] for t in detail["tasks"] if t.get("update")]
    if not norms:
        raise RuntimeError(f"job {job_id} accepted no update: no change length to clip to")
    return statistics.median(norms)


def parse_args(argv=None):
    from federated_accuracy import add_fleet_arguments, check_fleet_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help="comma-separated: none (the baseline, run first), central:<epsilon>, local:<epsilon>")
    parser.add_argument("--delta", type=float, default=1e-5, help="the delta every epsilon is stated at")
    parser.add_argument("--clip-norm", type=float, default=None,
                        help="C (default: per seed, the median change length of the non-private run)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "privacy")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "privacy")
    args = parser.parse_args(argv)
    check_fleet_arguments(parser, args)
    try:
        arms = [parse_arm(a) for a in args.arms.split(",") if a.strip()]
    except ValueError as exc:
        parser.error(f"--arms: {exc}")
    labels = [label_of(a) for a in arms]
    if "none" not in labels or len(set(labels)) != len(labels):
        parser.error("--arms needs none (the baseline) and no arm twice")
    if not 0 < args.delta < 0.1 or (args.clip_norm is not None and not args.clip_norm > 0):
        parser.error("--delta must be in (0, 0.1) and --clip-norm positive")
    args.arms = [None] + [a for a in arms if a is not None]
    return args


def summarize(runs: dict[str, list[dict]], seeds: list[int]) -> dict:
    from models.intervals import mean_interval

    base = {run["seed"]: run for run in runs["none"]}
    arms = {}
    for label, per_seed in runs.items():
        finals = [run["final_accuracy"] for run in per_seed]
        differences = [run["final_accuracy"] - base[run["seed"]]["final_accuracy"] for run in per_seed]
        arms[label] = {
            "final_accuracy": statistics.fmean(finals),
            "ci95": list(mean_interval(finals)) if len(finals) > 1 else None,
            "difference_vs_none": statistics.fmean(differences),
            "difference_ci95": list(mean_interval(differences)) if len(differences) > 1 and label != "none" else None,
            "epsilon": max((run["epsilon"] for run in per_seed if run["epsilon"] is not None), default=None),
            "noise_multiplier": per_seed[0]["noise_multiplier"],
            "clip_norms": [run["clip_norm"] for run in per_seed],
            "per_seed": per_seed}
    return {"seeds": seeds, "arms": arms}


def table(summary: dict, delta: float) -> str:
    lines = [f"| arm | epsilon at delta {delta:g} | z | final accuracy (95% CI over seeds) | vs no privacy (points) |",
             "|---|---|---|---|---|"]
    for label, arm in summary["arms"].items():
        ci, diff = arm["ci95"], arm["difference_ci95"]
        epsilon = "-" if arm["epsilon"] is None else f"{arm['epsilon']:.2f}"
        noise = "-" if arm["noise_multiplier"] is None else f"{arm['noise_multiplier']:.3f}"
        accuracy = f"{100 * arm['final_accuracy']:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
        difference = f"{100 * arm['difference_vs_none']:+.1f}" + (
            f" [{100 * diff[0]:+.1f}, {100 * diff[1]:+.1f}]" if diff else "")
        lines.append(f"| {label} | {epsilon} | {noise} | {accuracy} | {difference} |")
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    base = summary["arms"]["none"]
    axis.axhline(100 * base["final_accuracy"], color="grey", linestyle="--", label="no privacy")
    for mode, color in (("central", "C0"), ("local", "C1")):
        points = sorted((arm["epsilon"], arm) for label, arm in summary["arms"].items()
                        if label.startswith(mode + ":") and arm["epsilon"] is not None)
        if not points:
            continue
        xs = [eps for eps, _ in points]
        ys = [100 * arm["final_accuracy"] for _, arm in points]
        errors = [[100 * (arm["final_accuracy"] - (arm["ci95"] or [arm["final_accuracy"]] * 2)[0]) for _, arm in points],
                  [100 * ((arm["ci95"] or [arm["final_accuracy"]] * 2)[1] - arm["final_accuracy"]) for _, arm in points]]
        axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, color=color, label=f"{mode} DP")
    axis.set_xscale("log")
    axis.set_xlabel("epsilon (client level)")
    axis.set_ylabel("final held-out accuracy (%)")
    axis.legend()
    fig.tight_layout()
    path = out / "accuracy_by_epsilon.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    from federated_accuracy import cpu_model, federated_run
    from fleet.local_coordinator import LocalCoordinator
    from fleet.transport import CoordinatorClient
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.run_root.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = {"settings": settings, "cpu": cpu_model(), "runs": {}}
    print(f"CPU: {results['cpu']}; seeds {args.seeds}; arms {', '.join(label_of(a) for a in args.arms)}", flush=True)
    partition = f"dirichlet:{args.alpha:g}"
    noise = {label_of(a): noise_for(a["epsilon"], args.rounds, args.delta, a["mode"]) for a in args.arms if a}
    with LocalCoordinator(args.run_root / "coordinator", artifact_cache=args.run_root / "artifact-cache",
                          extra_args=["--tick", "0.5"]) as coordinator:
        admin = CoordinatorClient(coordinator.base_url, coordinator.admin_token)
        for seed in args.seeds:
            clip_norm = args.clip_norm
            for arm in args.arms:
                label = label_of(arm)
                extra = {}
                if arm is not None:
                    extra["privacy"] = {"mode": arm["mode"], "clip_norm": clip_norm, "noise_multiplier": noise[label],
                                        "delta": args.delta}
                t0 = time.monotonic()
                report = federated_run(args, coordinator, partition, seed, args.run_root / f"{label}-seed{seed}",
                                       job_extra=extra)
                if arm is None and clip_norm is None:
                    clip_norm = median_change(coordinator, report["job_id"])
                privacy = admin.json("GET", f"api/v1/jobs/{report['job_id']}").get("privacy") or {}
                last = report["rounds"][-1]
                results["runs"].setdefault(label, []).append({
                    "seed": seed, "final_accuracy": last["value"], "final_ci95": last.get("ci95"),
                    "epsilon": privacy.get("epsilon_spent"), "noise_multiplier": noise.get(label),
                    "clip_norm": None if arm is None else clip_norm, "wall_seconds": time.monotonic() - t0,
                    "report": report})
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    runs = {label: [{k: v for k, v in run.items() if k != "report"} for run in per_seed]
            for label, per_seed in results["runs"].items()}
    summary = summarize(runs, args.seeds)
    results["wall_seconds"] = summary["wall_seconds"] = time.monotonic() - started
    summary.update(cpu=results["cpu"], delta=args.delta)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"plot: {plot(summary, args.out)}")
    print(table(summary, args.delta))
    print(f"whole comparison: {results['wall_seconds'] / 60:.1f} min on {results['cpu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
