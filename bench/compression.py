"""Compressed updates against fp32 uploads on the trusted harness, one invocation.

Every arm is bench/federated_accuracy.py's FedAvg job (the same fleet, tier, Dirichlet shards,
dropout draws and held-out evaluation) with another ``update_encoding`` (models/update_codecs):
``fp32`` (the baseline, run first per seed), ``fp16``, ``int8`` (a scale per rank component),
``int8_tensor`` and ``topk:<fraction>`` (error feedback on the device). Devices gzip what they
send when that is smaller (fleet/device.py), and the bytes counted are those on the wire: each
round's ``bytes_up`` is the sum of what the devices sent.

Per arm: final held-out accuracy (mean over seeds with a t interval; each seed's with its
Wilson interval), the difference from fp32 per seed and its interval, upload bytes per
device-round (the round's upload bytes over the updates it received) and their ratio to fp32's.
Writes ``<out>/results.json``, ``<out>/summary.json`` and a plot of accuracy against upload bytes::

    python bench/compression.py --out docs/compression
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
DEFAULT_ARMS = "fp32,int8,fp16,topk:0.1"


def parse_arm(text: str) -> dict:
    """``int8`` -> {"name": "int8"}; ``topk:0.1`` -> {"name": "topk", "fraction": 0.1} (checked)."""
    from models.update_codecs import get_codec

    name, _, fraction = text.strip().partition(":")
    setting = {"name": name}
    if fraction:
        setting["fraction"] = float(fraction)
    codec = get_codec(setting)
    return {"name": codec.name, **codec.options()}


def label_of(setting: dict) -> str:
    return setting["name"] + (f":{setting['fraction']:g}" if "fraction" in setting else "")


def parse_args(argv=None):
    from federated_accuracy import add_fleet_arguments, check_fleet_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help="comma-separated encodings (fp32 is the baseline and runs first), e.g. fp32,int8,topk:0.1")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "compression")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "compression")
    args = parser.parse_args(argv)
    check_fleet_arguments(parser, args)
    try:
        arms = [parse_arm(a) for a in args.arms.split(",") if a.strip()]
    except (TypeError, ValueError) as exc:
        parser.error(f"--arms: {exc}")
    labels = [label_of(a) for a in arms]
    if "fp32" not in labels or len(set(labels)) != len(labels):
        parser.error("--arms needs fp32 (the baseline) and no arm twice")
    args.arms = [a for a in arms if a["name"] == "fp32"] + [a for a in arms if a["name"] != "fp32"]
    return args


def upload_per_device_round(report: dict) -> float | None:
    """Upload bytes over the uploads made (accepted, and cut: sent after the round closed), over
    the run: what one device-round costs to send."""
    updates = sum((r.get("accepted") or 0) + (r.get("cut") or 0) for r in report["rounds"])
    sent = sum(r["bytes_up"] for r in report["rounds"])
    return sent / updates if updates else None


def summarize(runs: dict[str, list[dict]], seeds: list[int]) -> dict:
    from models.intervals import mean_interval

    base = {run["seed"]: run for run in runs["fp32"]}
    arms = {}
    for label, per_seed in runs.items():
        finals = [run["final_accuracy"] for run in per_seed]
        differences = [run["final_accuracy"] - base[run["seed"]]["final_accuracy"] for run in per_seed]
        sizes = [run["upload_bytes_per_device_round"] for run in per_seed]
        ratios = [run["upload_bytes_per_device_round"] / base[run["seed"]]["upload_bytes_per_device_round"]
                  for run in per_seed]
        arms[label] = {
            "final_accuracy": statistics.fmean(finals),
            "ci95": list(mean_interval(finals)) if len(finals) > 1 else None,
            "difference_vs_fp32": statistics.fmean(differences),
            "difference_ci95": list(mean_interval(differences)) if len(differences) > 1 and label != "fp32" else None,
            "upload_bytes_per_device_round": statistics.fmean(sizes),
            "upload_ratio_vs_fp32": statistics.fmean(ratios),
            "per_seed": [{"seed": run["seed"], "final_accuracy": run["final_accuracy"], "final_ci95": run["final_ci95"],
                          "upload_bytes_per_device_round": run["upload_bytes_per_device_round"]} for run in per_seed]}
    return {"seeds": seeds, "arms": arms}


def table(summary: dict) -> str:
    lines = ["| encoding | final accuracy (95% CI over seeds) | vs fp32 (points, 95% CI) | upload per device-round | "
             "vs fp32 |", "|---|---|---|---|---|"]
    for label, arm in summary["arms"].items():
        ci, diff = arm["ci95"], arm["difference_ci95"]
        lines.append(f"| {label} | {100 * arm['final_accuracy']:.1f}%"
                     + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
                     + f" | {100 * arm['difference_vs_fp32']:+.1f}"
                     + (f" [{100 * diff[0]:+.1f}, {100 * diff[1]:+.1f}]" if diff else "")
                     + f" | {arm['upload_bytes_per_device_round'] / 1e3:,.1f} KB | {arm['upload_ratio_vs_fp32']:.3f}x |")
    return "\n".join(lines)


def plot(summary: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for label, arm in summary["arms"].items():
        ci = arm["ci95"] or [arm["final_accuracy"]] * 2
        axis.errorbar(arm["upload_bytes_per_device_round"] / 1e3, 100 * arm["final_accuracy"],
                      yerr=[[100 * (arm["final_accuracy"] - ci[0])], [100 * (ci[1] - arm["final_accuracy"])]],
                      marker="o", capsize=4, label=label)
    axis.set_xscale("log")
    axis.set_xlabel("upload per device-round (KB, on the wire)")
    axis.set_ylabel("final held-out accuracy (%)")
    axis.legend()
    fig.tight_layout()
    path = out / "accuracy_by_upload_bytes.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    from federated_accuracy import cpu_model, federated_run
    from fleet.local_coordinator import LocalCoordinator
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.run_root.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = {"settings": settings, "cpu": cpu_model(), "runs": {}}
    print(f"CPU: {results['cpu']}; seeds {args.seeds}; arms {', '.join(label_of(a) for a in args.arms)}", flush=True)
    partition = f"dirichlet:{args.alpha:g}"
    with LocalCoordinator(args.run_root / "coordinator", artifact_cache=args.run_root / "artifact-cache",
                          extra_args=["--tick", "0.5"]) as coordinator:
        for seed in args.seeds:
            for arm in args.arms:
                label = label_of(arm)
                t0 = time.monotonic()
                report = federated_run(args, coordinator, partition, seed, args.run_root / f"{label}-seed{seed}",
                                       job_extra={} if arm["name"] == "fp32" else {"update_encoding": arm})
                last = report["rounds"][-1]
                results["runs"].setdefault(label, []).append({
                    "seed": seed, "final_accuracy": last["value"], "final_ci95": last.get("ci95"),
                    "upload_bytes_per_device_round": upload_per_device_round(report),
                    "wall_seconds": time.monotonic() - t0, "report": report})
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    runs = {label: [{k: v for k, v in run.items() if k != "report"} for run in per_seed]
            for label, per_seed in results["runs"].items()}
    summary = summarize(runs, args.seeds)
    results["wall_seconds"] = summary["wall_seconds"] = time.monotonic() - started
    summary["cpu"] = results["cpu"]
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"plot: {plot(summary, args.out)}")
    print(table(summary))
    print(f"whole comparison: {results['wall_seconds'] / 60:.1f} min on {results['cpu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
