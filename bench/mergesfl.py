"""MergeSFL against split learning without merging or regulation and FedAvg-LoRA, one invocation.

Every arm runs on the same simulated fleet (profiles, Dirichlet(alpha) shards of BBC News, dropout
draws per seed) against one real coordinator, with real devices running the real ExecuTorch
programs:

- ``fedavg``: FedAvg-LoRA, the trusted harness of bench/federated_accuracy.py (the job's tier,
  rounds of local steps, the coordinator's evaluation of every scored round);
- ``mergesfl``: a split job (``mode=mergesfl``): devices run the bottom (layers below
  ``--split-layer``, LoRA on every layer), the coordinator merges the features of each step
  into one batch and regulates batch sizes from the speeds it measured
  (coordinator/split/batch_regulation.py); bottoms averaged every ``--average-every`` steps;
- ``plain``: the same split job without merging or regulation (equal batch sizes, one top
  step per device's batch).

**Equal virtual time.** Per alpha and seed, FedAvg-LoRA runs first; its virtual time at the
end is the split arms' budget: they step until their virtual clock passes it
(fleet/split_simulator.py conducts them; the cost model is fleet/split_cost.py's counted FLOPs
at each profile's calibrated rate plus bytes over its link, the server's top at
``SERVER_SPEEDUP_OVER_REFERENCE`` times the reference rate). So the final accuracies compare
models that had the same virtual time.

**Scores.** Every scored model is evaluated on the held-out split (``--eval-examples``; the
whole split by default) with its 95% interval; across seeds, the mean with a t interval.
Time to target: per seed, the target is FedAvg-LoRA's final accuracy minus 1 point; an arm's
time is the virtual time of its first scored checkpoint at or above it. Idle time: per step,
each merged device's wait for the last one (virtual seconds). Device peak memory comes from
bench/split_memory.py, run once at the start (child processes, real steps).

Writes ``<out>/results.json`` (every run), ``<out>/summary.json`` (per alpha and arm:
``final_accuracy``, ``ci95``, ``time_to_target_s``, ``device_peak_rss_mib``,
``bytes_per_device_round``, ``idle_seconds_per_step``, per-seed values) and plots::

    python bench/mergesfl.py --out docs/mergesfl
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
ARMS = ("fedavg", "mergesfl", "plain")


def parse_args(argv=None):
    from federated_accuracy import add_fleet_arguments, check_fleet_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    parser.add_argument("--alphas", default="0.1,0.5", help="Dirichlet concentrations, comma-separated")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"arms to run, comma-separated (of {', '.join(ARMS)})")
    parser.add_argument("--split-layer", type=int, default=2, help="the first layer the server runs")
    parser.add_argument("--split-rank", type=int, default=4, help="LoRA rank on every layer of the split model")
    parser.add_argument("--split-seq", type=int, default=None, help="sequence length (default: the FedAvg tier's)")
    parser.add_argument("--batch-sizes", default="2,4,8", help="batch sizes compiled for the split devices")
    parser.add_argument("--target-batch", type=int, default=16, help="the merged batch MergeSFL aims for per step")
    parser.add_argument("--average-every", type=int, default=10, help="steps between averagings of the bottoms")
    parser.add_argument("--split-lr", type=float, default=0.05, help="the devices' SGD rate on the bottom's LoRA")
    parser.add_argument("--top-lr", type=float, default=4e-3, help="the server's learning rate on the top's LoRA")
    parser.add_argument("--top-optimizer", choices=("sgd", "adamw"), default="adamw",
                        help="the server's optimizer for the top (AdamW, as the FedAvg devices use)")
    parser.add_argument("--step-deadline", type=float, default=120.0, help="a split step's virtual deadline (s)")
    parser.add_argument("--checkpoints", type=int, default=3,
                        help="scored checkpoints of a split run, evenly spaced in virtual time (the last at the budget)")
    parser.add_argument("--examples-per-device", type=int, default=64,
                        help="examples of its shard a split device cycles through (the first N, shuffled by seed)")
    parser.add_argument("--clock", choices=("steady", "virtual"), default="steady",
                        help="steady (default): one-off artifact downloads left out of every arm's clock (the split "
                             "devices fetch their programs before it starts; FedAvg's steady clock); virtual: included")
    parser.add_argument("--max-split-steps", type=int, default=None,
                        help="stop a split run after this many steps even before the virtual budget (host time: "
                             "every step is a forward and backward of the top on this machine)")
    parser.add_argument("--skip-memory", action="store_true", help="do not run bench/split_memory.py")
    parser.add_argument("--from-results", type=Path, nargs="+", default=None, metavar="RESULTS_JSON",
                        help="run nothing: summarize the runs of these results.json files together (invocations of "
                             "the same settings on other seeds), writing the combined results and summary to --out")
    parser.add_argument("--memory-json", type=Path, default=None,
                        help="use this earlier bench/split_memory.py --json result instead of measuring again")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "mergesfl")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "mergesfl")
    args = parser.parse_args(argv)
    check_fleet_arguments(parser, args)
    try:
        args.alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        parser.error("--alphas and --batch-sizes take numbers separated by commas")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown or "fedavg" not in args.arms:
        parser.error(f"--arms: fedavg (it sets the virtual-time budget) and any of {', '.join(ARMS)}; got {unknown}")
    if not args.alphas or not args.batch_sizes or args.checkpoints < 1 or args.target_batch < 1:
        parser.error("need alphas, batch sizes, at least one checkpoint and a target batch >= 1")
    return args


# --- one split run ---------------------------------------------------------------------------------

class SplitEvaluator:
    """Scores a split job's model (the coordinator's full adapter) on held-out examples, in this process."""

    def __init__(self, args):
        from models.lora import apply_lora, resolve_layout
        from models.registry import load_base_model
        from models.tasks import get_task

        self.base = load_base_model(args.model)
        depth = self.base.config.num_hidden_layers
        self.model = apply_lora(self.base.model, resolve_layout(depth, args.split_rank, depth))
        self.task = get_task("bbcnews")
        self.examples = self.task.eval_examples(args.eval_examples)
        self.seq = args.split_seq

    def score(self, adapter: dict) -> dict:
        import torch

        from models.adapter_codec import program_key

        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for key, value in adapter.items():
                named[program_key(key).partition(".")[2]].copy_(value)
        self.model.eval()
        return self.task.evaluate(self.model, self.base.tokenizer, self.examples, seq=self.seq)


def split_run(args, coordinator, evaluator: SplitEvaluator, mode: str, alpha: float, seed: int, budget_s: float,
              workdir: Path) -> dict:
    """One split job with ``args.devices`` devices until its virtual clock passes ``budget_s``."""
    import requests
    from safetensors.torch import load

    from federated_accuracy import experiment_tier
    from fleet.data import LocalData
    from fleet.profiles import fleet_profiles
    from fleet.split_cost import ModelShape
    from fleet.split_simulator import SplitConductor, SplitDevice
    from fleet.split_worker import SplitWorker
    from fleet.transport import CoordinatorClient
    from models.tasks.partition import PartitionSpec

    admin = CoordinatorClient(coordinator.base_url, coordinator.admin_token)
    spec = {"model": args.model, "split_layer": args.split_layer, "rank": args.split_rank, "seq": args.split_seq,
            "batch_sizes": args.batch_sizes, "target_batch": args.target_batch, "steps": 100_000,
            "average_every": args.average_every, "step_deadline_s": args.step_deadline, "mode": mode,
            "lr": args.split_lr, "top_lr": args.top_lr, "top_optimizer": args.top_optimizer,
            "loss_positions": experiment_tier(args).get("loss_positions"), "clock": "conducted"}
    job = admin.json("POST", "api/v1/split-jobs", spec)
    job_id = job["split_job_id"]
    while job["status"] == "preparing":
        time.sleep(1.0)
        job = admin.json("GET", f"api/v1/split-jobs/{job_id}")
    if job["status"] != "running":
        raise RuntimeError(f"split job {job_id} did not start: {job.get('error')}")
    partition = PartitionSpec.parse(f"dirichlet:{alpha:g}", seed=seed)
    profiles = fleet_profiles(args.profile, args.devices, dropout=args.dropout, seed=seed)
    devices = []
    for index, profile in enumerate(profiles):
        data = LocalData.from_task("bbcnews", index, args.devices, partition)
        examples = [data.task.encode(evaluator.base.tokenizer, e, args.split_seq)
                    for e in data.examples[:args.examples_per_device]]
        registered = admin.json("POST", "api/v1/devices", {
            "enrollment_key": coordinator.enrollment_key, "name": f"{mode}-a{alpha:g}-s{seed}-{index}",
            "platform": "simulated", "capabilities": {
                "ram_mb": int(profile.ram_mb), "cores": 1, "gflops": round(profile.peak_gflops, 3),
                "bandwidth_mbps": float(profile.bandwidth_mbps), "runtimes": ["executorch"]}})
        client = CoordinatorClient(coordinator.base_url, registered["token"])
        worker = SplitWorker(client, job_id, examples, workdir / f"device{index}")
        devices.append(SplitDevice(worker=worker, profile=profile, name=str(registered["device_id"])))

    def fetch_adapter() -> dict:
        response = requests.get(f"{coordinator.base_url}/api/v1/split-jobs/{job_id}/adapter", timeout=120,
                                headers={"Authorization": f"Bearer {coordinator.admin_token}"})
        response.raise_for_status()
        return load(response.content)

    points = [{"clock_s": 0.0, **_scored(evaluator.score(fetch_adapter()))}]
    marks = [budget_s * (i + 1) / args.checkpoints for i in range(args.checkpoints)]
    shape = ModelShape.of(evaluator.base.config)
    conductor = SplitConductor(admin, job_id, devices, shape, split_layer=args.split_layer, seq=args.split_seq,
                               rank=args.split_rank, seed=seed,
                               loss_positions=experiment_tier(args).get("loss_positions"),
                               prefetch=args.clock == "steady")
    def checkpoint(trace) -> bool:
        last_step = args.max_split_steps is not None and len(conductor.trace.steps) >= args.max_split_steps
        while marks and (trace.closed_at >= marks[0] or last_step):
            marks.pop(0)
            points.append({"clock_s": trace.closed_at, "step": trace.step, **_scored(evaluator.score(fetch_adapter()))})
            if last_step:
                marks.clear()
        return not marks

    conductor.run(stop=checkpoint)
    # Stopped: the coordinator keeps the job's model and progress and frees its top's copy of the
    # model; the devices unload their programs (a comparison runs many split jobs in one process).
    summary = admin.json("POST", f"api/v1/split-jobs/{job_id}/stop", {})["progress"]
    for device in devices:
        device.worker.close()
    trace = conductor.trace
    steps = len(trace.steps)
    return {"mode": mode, "alpha": alpha, "seed": seed, "budget_s": budget_s, "curve": points, "steps": steps,
            "averagings": summary["averagings"], "idle_seconds": trace.idle_seconds,
            "idle_seconds_per_step": trace.idle_seconds / steps if steps else None,
            "idle_seconds_per_device_step": _idle_per_device_step(trace),
            "prefetched_bytes_per_device": trace.prefetched_bytes / max(1, len(devices)),
            "merged_batch_mean": statistics.fmean(sum(s.planned[n] for n in s.merged) for s in trace.steps) if steps else None,
            "bytes_per_device": {name: w["bytes_up"] + w["bytes_down"] for name, w in summary["per_worker"].items()},
            "batch_sizes_by_profile": _sizes_by_profile(devices, trace),
            "device_gflop_mean": _device_gflop(trace, shape, args, len(devices))}


def _idle_per_device_step(trace) -> float | None:
    """Idle time per merged device and step: a step's idle seconds over the devices merged in it
    (plain split learning merges more devices per step, so its per-step sum alone overstates)."""
    merged = sum(len(s.merged) for s in trace.steps)
    return trace.idle_seconds / merged if merged else None


def _device_gflop(trace, shape, args, devices: int) -> float:
    """GFLOP a split device computed over the run, mean over the fleet: per merged step its
    bottom's two forwards and one backward (fleet/split_cost.py), counted, not timed."""
    from fleet.split_cost import bottom_step_flops

    total = sum(bottom_step_flops(shape, args.split_layer, step.planned[name], args.split_seq, args.split_rank)
                for step in trace.steps for name in step.merged)
    return total / max(1, devices) / 1e9


def _scored(result: dict) -> dict:
    return {"accuracy": result["value"], "ci95": result.get("ci95"), "loss": result.get("loss")}


def _sizes_by_profile(devices, trace) -> dict:
    by_name = {d.name: d.profile.name for d in devices}
    sizes: dict[str, list[int]] = {}
    for step in trace.steps:
        for name, size in step.planned.items():
            sizes.setdefault(by_name[name], []).append(size)
    return {profile: statistics.fmean(values) for profile, values in sorted(sizes.items())}


# --- FedAvg-LoRA ----------------------------------------------------------------------------------------

def _fedavg_device_gflop(report: dict) -> dict:
    """GFLOP the fleet's devices computed (every training pass of every task they ran, finished
    or not), mean over the fleet: counted FLOPs per step times steps."""
    outcomes = report.get("outcomes") or []
    total = sum((o.get("flops_per_step") or 0) * (o.get("steps") or 0) for o in outcomes)
    return {"device_gflop_mean": total / max(1, report["spec"]["devices"]) / 1e9}


def fedavg_run(args, coordinator, alpha: float, seed: int, workdir: Path) -> dict:
    from federated_accuracy import federated_run
    from heterogeneity import curve

    report = federated_run(args, coordinator, f"dirichlet:{alpha:g}", seed, workdir,
                           summarize_outcomes=_fedavg_device_gflop)
    points = curve(report)
    devices_rounds = max(1, args.devices) * max(1, len(report["rounds"]))
    clock = "steady_s" if args.clock == "steady" else "virtual_s"
    for point in points:
        point["clock_s"] = point[clock]
    return {"mode": "fedavg", "alpha": alpha, "seed": seed, "curve": points,
            "bytes_per_device_round": (points[-1]["bytes_up"] + points[-1]["bytes_down"]) / devices_rounds,
            "budget_s": points[-1][clock],
            "device_gflop_mean": report["outcome_summary"]["device_gflop_mean"]}


# --- summary ---------------------------------------------------------------------------------------------

def summarize(runs: list[dict], args, memory: dict | None) -> dict:
    from models.intervals import mean_interval

    summary = {"alphas": {}, "seeds": args.seeds}
    peak = _peak_memory(memory, args.split_layer)
    for alpha in args.alphas:
        fedavg = {r["seed"]: r for r in runs if r["alpha"] == alpha and r["mode"] == "fedavg"}
        arms = {}
        for mode in args.arms:
            per_seed = []
            for run in (r for r in runs if r["alpha"] == alpha and r["mode"] == mode):
                target = fedavg[run["seed"]]["curve"][-1]["accuracy"] - 0.01
                hit = next((p for p in run["curve"][1:] if p["accuracy"] is not None and p["accuracy"] >= target), None)
                if mode == "fedavg":
                    per_round = run["bytes_per_device_round"]
                else:
                    periods = max(1, run["averagings"])
                    per_round = statistics.fmean(run["bytes_per_device"].values()) / periods \
                        if run["bytes_per_device"] else None
                per_seed.append({"seed": run["seed"], "final_accuracy": run["curve"][-1]["accuracy"],
                                 "final_ci95": run["curve"][-1]["ci95"], "target": target,
                                 "time_to_target_s": hit["clock_s"] if hit else None,
                                 "clock_s": run["curve"][-1]["clock_s"], "bytes_per_device_round": per_round,
                                 "fedavg_accuracy_at_same_time": _accuracy_at(fedavg[run["seed"]]["curve"],
                                                                              run["curve"][-1]["clock_s"]),
                                 "idle_seconds_per_step": run.get("idle_seconds_per_step"),
                                 "idle_seconds_per_device_step": run.get("idle_seconds_per_device_step"),
                                 "device_gflop_mean": run.get("device_gflop_mean"),
                                 "steps": run.get("steps"), "batch_sizes_by_profile": run.get("batch_sizes_by_profile")})
            finals = [s["final_accuracy"] for s in per_seed]
            times = [s["time_to_target_s"] for s in per_seed]
            arms[mode] = {
                "final_accuracy": statistics.fmean(finals) if finals else None,
                "ci95": list(mean_interval(finals)) if len(finals) > 1 else None,
                "time_to_target_s": statistics.median(times) if times and None not in times else None,
                "time_to_target_reached_in": sum(t is not None for t in times),
                "device_peak_rss_mib": peak.get("fedavg" if mode == "fedavg" else "split"),
                "bytes_per_device_round": _median([s["bytes_per_device_round"] for s in per_seed]),
                "idle_seconds_per_step": _median([s["idle_seconds_per_step"] for s in per_seed]),
                "idle_seconds_per_device_step": _median([s["idle_seconds_per_device_step"] for s in per_seed]),
                "device_gflop_mean": _median([s["device_gflop_mean"] for s in per_seed]),
                "fedavg_accuracy_at_same_time": _mean([s["fedavg_accuracy_at_same_time"] for s in per_seed]),
                "per_seed": per_seed}
        summary["alphas"][f"{alpha:g}"] = arms
    return summary


def _accuracy_at(curve: list[dict], moment: float) -> float | None:
    """A run's accuracy at ``moment`` on the clock: its last scored point at or before it."""
    scored = [p for p in curve if p["accuracy"] is not None and p["clock_s"] <= moment + 1e-9]
    return scored[-1]["accuracy"] if scored else None


def _mean(values):
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if len(known) == len(values) and known else None


def _median(values):
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _peak_memory(memory: dict | None, split_layer: int) -> dict:
    if not memory:
        return {}
    rows = memory.get("rows", {})
    fedavg = next((v for k, v in rows.items() if k.startswith("fedavg")), None)
    split = rows.get(f"split, layers below {split_layer}")
    return {"fedavg": fedavg and fedavg["peak_rss_mib"], "split": split and split["peak_rss_mib"]}


def table(summary: dict) -> str:
    lines = ["| alpha | arm | final accuracy (95% CI over seeds) | FedAvg-LoRA at the same time | time to target (s) | "
             "idle s/step | idle s/device-step | device GFLOP | bytes/device/round | device peak RSS (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for alpha, arms in summary["alphas"].items():
        for mode, arm in arms.items():
            interval = arm["ci95"]
            accuracy = "-" if arm["final_accuracy"] is None else f"{100 * arm['final_accuracy']:.1f}%" + (
                f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")
            same_time = arm["fedavg_accuracy_at_same_time"]
            cells = [alpha, mode, accuracy, "-" if same_time is None else f"{100 * same_time:.1f}%",
                     _fmt(arm["time_to_target_s"], "{:.0f}"),
                     _fmt(arm["idle_seconds_per_step"], "{:.2f}"),
                     _fmt(arm.get("idle_seconds_per_device_step"), "{:.2f}"),
                     _fmt(arm.get("device_gflop_mean"), "{:,.0f}"), _fmt(arm["bytes_per_device_round"], "{:,.0f}"),
                     _fmt(arm["device_peak_rss_mib"], "{:.0f}")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def plot(runs: list[dict], args, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(args.alphas), figsize=(6 * len(args.alphas), 4), squeeze=False)
    for axis, alpha in zip(axes[0], args.alphas):
        for mode in args.arms:
            for i, run in enumerate(r for r in runs if r["alpha"] == alpha and r["mode"] == mode):
                xs = [p["clock_s"] / 60 for p in run["curve"] if p["accuracy"] is not None]
                ys = [100 * p["accuracy"] for p in run["curve"] if p["accuracy"] is not None]
                axis.plot(xs, ys, marker="o", color={"fedavg": "C0", "mergesfl": "C1", "plain": "C2"}[mode],
                          alpha=0.8, label=mode if i == 0 else None)
        axis.set_title(f"Dirichlet({alpha:g})")
        axis.set_xlabel(f"{args.clock} clock (virtual min)")
        axis.set_ylabel("held-out accuracy (%)")
        axis.legend()
    fig.tight_layout()
    path = out / "accuracy_by_virtual_time.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    return paths


def combine(args) -> int:
    """``--from-results``: one summary over the runs of several invocations with the same settings
    (seeds aside), so that a comparison cut short can be completed on the seeds it lacks."""
    from fleet.split_cost import SERVER_SPEEDUP_OVER_REFERENCE

    sources = [json.loads(path.read_text()) for path in args.from_results]
    ignored = {"seeds", "out", "run_root", "from_results", "memory_json", "skip_memory"}
    first = {k: v for k, v in sources[0]["settings"].items() if k not in ignored}
    for path, source in zip(args.from_results, sources):
        settings = {k: v for k, v in source["settings"].items() if k not in ignored}
        differing = sorted(k for k in set(first) | set(settings) if first.get(k) != settings.get(k))
        if differing:
            raise SystemExit(f"{path}: settings differ from {args.from_results[0]}'s in {differing}: not one comparison")
    runs = [run for source in sources for run in source["runs"]]
    seen = [(r["mode"], r["alpha"], r["seed"]) for r in runs]
    if len(set(seen)) != len(seen):
        raise SystemExit("the same arm, alpha and seed appear twice across the files")
    for key, value in sources[0]["settings"].items():
        if key not in ignored and hasattr(args, key):
            setattr(args, key, value)
    args.seeds = sorted({r["seed"] for r in runs})
    args.alphas = sorted({r["alpha"] for r in runs})
    memory = next((source["memory"] for source in sources if source.get("memory")), None)
    if memory is None and args.memory_json is not None:
        memory = json.loads(args.memory_json.read_text())
    summary = summarize(runs, args, memory)
    wall = [source.get("wall_seconds") for source in sources]
    summary.update(cpu=sources[0]["cpu"], server_speedup_over_reference=SERVER_SPEEDUP_OVER_REFERENCE,
                   invocations=[{"results": str(path), "seeds": sorted({r["seed"] for r in source["runs"]}),
                                 "cpu": source["cpu"], "wall_seconds": source.get("wall_seconds")}
                                for path, source in zip(args.from_results, sources)],
                   wall_seconds=sum(w for w in wall if w is not None))
    args.out.mkdir(parents=True, exist_ok=True)
    combined = {"settings": {**sources[0]["settings"], "seeds": args.seeds}, "cpu": sources[0]["cpu"],
                "memory": memory, "invocations": summary["invocations"], "runs": runs}
    (args.out / "results.json").write_text(json.dumps(combined, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for path in plot(runs, args, args.out):
        print(f"plot: {path}")
    print(table(summary))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_results:
        return combine(args)
    from federated_accuracy import cpu_model, experiment_tier
    from fleet.local_coordinator import LocalCoordinator
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.run_root.mkdir(parents=True, exist_ok=True)
    args.split_seq = args.split_seq or int(experiment_tier(args)["seq"])
    cpu = cpu_model()
    print(f"CPU: {cpu}; alphas {args.alphas}; seeds {args.seeds}; arms {', '.join(args.arms)}", flush=True)
    memory = None
    if args.memory_json is not None:
        memory = json.loads(args.memory_json.read_text())
    elif not args.skip_memory:
        memory_json = args.run_root / "split_memory.json"
        subprocess.run([sys.executable, str(REPO / "bench" / "split_memory.py"), "--model", args.model,
                        "--split-layers", str(args.split_layer), "--seq", str(args.split_seq),
                        "--work", str(args.run_root / "split_memory"), "--json", str(memory_json)], check=True)
        memory = json.loads(memory_json.read_text())
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "cpu": cpu,
               "memory": memory, "runs": []}
    evaluator = SplitEvaluator(args)
    with LocalCoordinator(args.run_root / "coordinator", artifact_cache=args.run_root / "artifact-cache",
                          extra_args=["--tick", "0.5"]) as coordinator:
        for alpha in args.alphas:
            for seed in args.seeds:
                t0 = time.monotonic()
                base = fedavg_run(args, coordinator, alpha, seed, args.run_root / f"fedavg-a{alpha:g}-s{seed}")
                base["wall_seconds"] = time.monotonic() - t0
                results["runs"].append(base)
                for mode in (m for m in args.arms if m != "fedavg"):
                    t0 = time.monotonic()
                    run = split_run(args, coordinator, evaluator, mode, alpha, seed, base["budget_s"],
                                    args.run_root / f"{mode}-a{alpha:g}-s{seed}")
                    run["wall_seconds"] = time.monotonic() - t0
                    results["runs"].append(run)
                    gc.collect()        # the run's devices and their runtime modules
                    print(f"{mode}, Dirichlet({alpha:g}), seed {seed}: {100 * run['curve'][-1]['accuracy']:.1f}% after "
                          f"{run['steps']} steps, {run['curve'][-1]['clock_s']:.0f} s on the {args.clock} clock "
                          f"(FedAvg-LoRA {100 * base['curve'][-1]['accuracy']:.1f}%)", flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    summary = summarize(results["runs"], args, memory)
    results["wall_seconds"] = summary["wall_seconds"] = time.monotonic() - started
    from fleet.split_cost import SERVER_SPEEDUP_OVER_REFERENCE

    summary.update(cpu=cpu, server_speedup_over_reference=SERVER_SPEEDUP_OVER_REFERENCE,
                   heldout_examples=len(evaluator.examples))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for path in plot(results["runs"], args, args.out):
        print(f"plot: {path}")
    print(table(summary))
    print(f"whole comparison: {results['wall_seconds'] / 60:.1f} min on {cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
