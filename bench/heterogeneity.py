"""Heterogeneity-aware configurators against uniform tiers, over several seeds, in one invocation.

Every arm is a (configurator, aggregation strategy) pair run on the same simulated fleets as
bench/federated_accuracy.py (the trusted harness: the same tier, data, devices' settings chosen
on validation, Dirichlet(alpha) shards, real devices training the real ExecuTorch programs
against one real coordinator, one job per run, every held-out article scored with its 95%
interval). Per seed every arm sees the same shards, device profiles and dropout draws, so the
arms differ only in what each device is given to train and how the updates are combined:

- ``uniform:fedavg``: every device trains the job's tier (the baseline);
- ``legend:fedavg``: LoRA depth and rising ranks sized to each device, never below the
  learnable minimum (coordinator/scheduling/legend.py);
- ``fedspine:fedavg``: a bandit per device over pruning ratio x rank (both axes), rewarded by
  the loss on a batch the device held out, per recurring second
  (coordinator/scheduling/fedspine.py);
- ``hetlora:hetlora``: a rank per device by capability, lowered by the devices' own rank
  self-pruning, aggregated with HetLoRA's sparsity weights (models/rank_pruning.py).

Other pairs (``fedspine:flexlora``, ``legend:zero_padding``, ...) are one ``--arms`` entry away,
and ``uniform@p0.5:fedavg`` (in the default arms) is FedSpine's own baseline: the model pruned
once at 50% and tuned with the reference's fixed rank by every device (its final accuracy is
its deployed model's); ``deployed_vs_pruned_once`` in the summary compares each arm's deployed
model at 50% with it, seed by seed.

**Clocks.** Virtual time comes from the cost model (counted FLOPs at each profile's calibrated
rate, bytes at its link, fleet/virtual_clock.py), so the host's load moves no result, only this
script's wall time. The *virtual* clock includes one-off artifact downloads (every device
fetches each new tier once); the *steady* clock leaves them out, as for a fleet that fetched
its artifacts ahead of time.

**Target.** Per seed, uniform's final accuracy minus 1 point (``--target`` for a fixed one).
Time to target is the virtual time at the end of the first *scored* round at or above it
(``--eval-every`` sets the resolution); speedups are per seed (uniform's time over the arm's),
reported as the median over seeds. Bytes are counted up to the round that reached the target,
and over the whole run.

**Deployed models.** The coordinator scores the global adapter on the reference model. A device
given a pruned tier deploys that pruned model, so after each run every pruned tier its devices
trained is scored too: the tier's model with the final global adapter cut to it
(``deployed`` per seed in the summary; FedSpine's cuts of the tuned model are labelled with the
round of the adapter that chose them, ``p0.5-r8 cut@6``). The model a device of ratio p deploys
at the end is the tier at p with the highest rank and the newest cut (:func:`deployed_model`).

Writes ``<out>/results.json`` (every round of every run), ``<out>/summary.json`` (per arm:
``time_to_target_s``, ``speedup_vs_uniform``, ``final_accuracy``, ``ci95``, ``upload_bytes``,
``download_bytes``, per-seed values, tiers handed out per profile) and plots::

    python bench/heterogeneity.py --out docs/heterogeneity
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DEFAULT_ARMS = "uniform:fedavg,legend:fedavg,fedspine:fedavg,hetlora:hetlora,uniform@p0.5:fedavg"
#: Each configurator's options in this comparison. The reference tier has LoRA on the last 4
#: layers at rank 8, so LEGEND chooses depth 2 or 4 (2 is its learnable minimum), FedSpine's
#: arms are 2 pruning ratios x 2 ranks with every device at the target sparsity (0.5) from
#: round 4 on (the first third tunes the whole model, whose tuned state then chooses the cut),
#: HetLoRA's ranks are 2, 4 and 8.
CONFIGURATOR_OPTIONS = {
    "uniform": {},
    "legend": {"depths": [2, 4], "slack": 2.0, "min_steps": 2},
    "fedspine": {"prune_ratios": [0.0, 0.5], "ranks": [4, 8], "sparsity_schedule": [[4, 0.5]]},
    "hetlora": {},
}


@dataclass(frozen=True)
class Arm:
    """One arm: a configurator, an aggregation strategy and, for a pruned-once baseline, the
    pruning ratio of the job's own tier (``uniform@p0.5:fedavg``: every device trains the model
    pruned once at 50% with the reference's fixed rank, FedSpine's comparison)."""

    configurator: str
    strategy: str = "fedavg"
    prune_ratio: float = 0.0

    @property
    def label(self) -> str:
        pruned = f"@p{self.prune_ratio:g}" if self.prune_ratio else ""
        return f"{self.configurator}{pruned}:{self.strategy}"


BASELINE = Arm("uniform", "fedavg")


def parse_arms(text: str) -> list[Arm]:
    """``"uniform:fedavg,legend:fedavg,uniform@p0.5:fedavg"`` -> arms, the baseline
    ``uniform:fedavg`` first and required; a strategy left out is fedavg."""
    from coordinator.scheduling.configurator import configurator_names
    from coordinator.strategies import strategy_names

    arms = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        head, _, strategy = item.partition(":")
        configurator, _, pruned = head.partition("@p")
        try:
            ratio = float(pruned) if pruned else 0.0
        except ValueError:
            raise ValueError(f"arm {item!r}: the pruning ratio after '@p' must be a number") from None
        if configurator not in configurator_names() or (strategy or "fedavg") not in strategy_names():
            raise ValueError(f"unknown arm {item!r}: configurators {configurator_names()}, strategies {strategy_names()}")
        if not 0.0 <= ratio < 1.0 or (ratio and configurator != "uniform"):
            raise ValueError(f"arm {item!r}: '@pRATIO' (a ratio in [0, 1)) is for the uniform configurator only")
        arm = Arm(configurator, strategy or "fedavg", ratio)
        if arm not in arms:
            arms.append(arm)
    if BASELINE not in arms:
        raise ValueError("the arms must include uniform:fedavg, the baseline every speedup is measured against")
    arms.remove(BASELINE)
    return [BASELINE, *arms]


# --- one run --------------------------------------------------------------------------------------

def outcome_summary(report: dict) -> dict:
    """What the per-task outcomes say that the rounds do not: each round's steady length (without
    one-off artifact downloads) and the tiers handed out per device profile."""
    from fleet.profiles import PROFILES

    steady: dict[int, float] = {}
    tiers: dict[str, dict[str, int]] = {}
    for o in report.get("outcomes", []):
        tiers.setdefault(o["profile"], {}).setdefault(o.get("arm") or "reference", 0)
        tiers[o["profile"]][o.get("arm") or "reference"] += 1
        if o["status"] == "accepted":
            one_off = o.get("artifact_bytes_down", 0) * 8 / (PROFILES[o["profile"]].bandwidth_mbps * 1e6)
            steady[o["round"]] = max(steady.get(o["round"], 0.0), o["virtual_seconds"] - one_off)
    return {"steady_round_seconds": {str(k): v for k, v in sorted(steady.items())},
            "tiers_by_profile": {p: dict(sorted(t.items())) for p, t in sorted(tiers.items())}}


def curve(report: dict) -> list[dict]:
    """Per round (0 = zero-shot): cumulative virtual and steady seconds, bytes, and the score
    with its interval (None for a round the coordinator did not score)."""
    steady_of = report.get("outcome_summary", {}).get("steady_round_seconds", {})
    initial = report["initial_evaluation"]
    points = [{"round": 0, "virtual_s": 0.0, "steady_s": 0.0, "bytes_up": 0, "bytes_down": 0,
               "accuracy": initial["value"], "ci95": initial.get("ci95")}]
    for r in report["rounds"]:
        last = points[-1]
        points.append({"round": r["round"], "virtual_s": last["virtual_s"] + (r["virtual_seconds"] or 0.0),
                       "steady_s": last["steady_s"] + steady_of.get(str(r["round"]), r["virtual_seconds"] or 0.0),
                       "bytes_up": last["bytes_up"] + r["bytes_up"], "bytes_down": last["bytes_down"] + r["bytes_down"],
                       "accuracy": r["value"], "ci95": r.get("ci95")})
    return points


def reached(points: list[dict], target: float) -> dict | None:
    """The first scored point at or above ``target`` (None if the run never got there)."""
    return next((p for p in points[1:] if p["accuracy"] is not None and p["accuracy"] >= target), None)


# --- the models devices deploy --------------------------------------------------------------------

def deployed_tiers(admin, job_id: int, rounds: int) -> dict[str, dict]:
    """Label -> tier of every *pruned* tier the job's devices trained (from the rounds' tasks).

    One arm can have several cuts of its pruned base (FedSpine prunes from the tuned model: a
    device moving up gets a cut of the model as tuned then, a 2 GB phone arriving first a cut of
    the untuned base), so a tier with ``prune_importance_adapter`` is labelled with the round of
    the adapter that chose its cut: ``p0.5-r8 cut@6``; an untuned cut keeps the arm's label.
    """
    sources = {s["adapter_sha256"]: s["round"]
               for s in admin.json("GET", f"/api/v1/jobs/{job_id}").get("pruning_sources", [])}
    tiers = {}
    for number in range(1, rounds + 1):
        for task in admin.json("GET", f"/api/v1/jobs/{job_id}/rounds/{number}")["tasks"]:
            tier = task.get("tier")
            if tier and float(tier.get("prune_ratio", 0.0)) > 0:
                adapter = tier.get("prune_importance_adapter")
                label = (task.get("arm") or "reference") + (f" cut@{sources.get(adapter, '?')}" if adapter else "")
                tiers.setdefault(label, tier)
    return dict(sorted(tiers.items()))


def score_deployed_tier(artifact_dir: Path, reference_dir: Path, global_tensors: dict, examples, seq: int) -> dict:
    """What a device of a pruned tier deploys, scored: the tier's own pruned model (rebuilt from its
    artifact) with the global adapter cut to its layout, as the coordinator cuts it for the device.

    The coordinator scores the global adapter on the reference model only; a pruned tier's model
    has fewer heads and channels, so its accuracy with the same adapter is a separate number.
    """
    import torch

    from coordinator.services.adapter_mapping import AdapterLayout, project
    from export.manifest import read_manifest
    from export.server_model import load_artifact_model, set_adapter_tensors
    from models.frozen_prefix import FrozenPrefixModel, first_trained_layer
    from models.tasks import get_task

    model = load_artifact_model(artifact_dir)
    reference = AdapterLayout.from_manifest(read_manifest(reference_dir).data)
    tensors = project(global_tensors, reference, AdapterLayout.from_manifest(model.manifest.data))
    set_adapter_tensors(model.peft_model, tensors)
    scorer = FrozenPrefixModel(model.peft_model) if (first_trained_layer(model.peft_model) or 0) > 0 else model.peft_model
    with torch.no_grad():
        return get_task("bbcnews").evaluate(scorer, model.tokenizer, examples, seq=seq)


def score_deployed(args, coordinator, report: dict) -> dict:
    """Arm label -> accuracy (with its interval) of each pruned tier's model with the job's final
    global adapter, on the whole held-out split."""
    import io
    import zipfile

    from safetensors.numpy import load

    from coordinator.services.artifacts import artifact_key
    from fleet.transport import CoordinatorClient
    from models.tasks import get_task
    from models.tier_algebra import tier_ranks

    admin = CoordinatorClient(coordinator.base_url, token=coordinator.admin_token)
    job_id = report["job_id"]
    tiers = deployed_tiers(admin, job_id, len(report["rounds"]))
    if not tiers:
        return {}
    zipped = admin.request("GET", f"api/v1/jobs/{job_id}/adapter").content
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        global_tensors = load(archive.read("adapter_model.safetensors"))
    job_tier = admin.json("GET", f"/api/v1/jobs/{job_id}")["tier"]
    cache = args.run_root / "artifact-cache"
    reference_dir = cache / artifact_key(args.model, job_tier)
    examples = get_task("bbcnews").eval_examples(args.eval_examples)
    described = {}
    for arm, tier in tiers.items():
        cut = arm.partition(" cut@")[2]
        described[arm] = {"prune_ratio": float(tier["prune_ratio"]), "rank": max(tier_ranks(tier)),
                          "cut_round": int(cut) if cut.isdigit() else None}
    if not args.score_all_cuts:     # only the model each ratio's devices deploy (each costs a minute or two)
        chosen = {deployed_model(described, d["prune_ratio"])[0] for d in described.values()}
        described = {arm: d for arm, d in described.items() if arm in chosen}
    scores = {}
    for arm, description in described.items():
        tier = tiers[arm]
        result = score_deployed_tier(cache / artifact_key(args.model, tier), reference_dir, global_tensors,
                                     examples, seq=int(tier["seq"]))
        scores[arm] = {**description, "accuracy": result["value"],
                       "ci95": result.get("ci95"), "num_examples": result.get("num_examples")}
        print(f"deployed {arm}: accuracy {result['value']:.3f} {result.get('ci95')}", flush=True)
    return scores


# --- across seeds ---------------------------------------------------------------------------------

def summarize(runs: dict[str, list[dict]], seeds: list[int], fixed_target: float | None) -> dict:
    """Per arm: time to target (virtual, steady), speedups, accuracy, bytes; every figure per seed
    and as the median (times, speedups, bytes) or the mean with its t interval (accuracy)."""
    from models.intervals import mean_interval

    targets = [fixed_target if fixed_target is not None else runs["uniform:fedavg"][i]["curve"][-1]["accuracy"] - 0.01
               for i in range(len(seeds))]
    summary = {"seeds": seeds, "targets": targets, "arms": {}}
    for label, per_seed in runs.items():
        arm = {"per_seed": []}
        for i, run in enumerate(per_seed):
            points, target = run["curve"], targets[i]
            hit = reached(points, target)
            base = reached(runs["uniform:fedavg"][i]["curve"], target)
            arm["per_seed"].append({
                "seed": seeds[i], "target": target, "final_accuracy": points[-1]["accuracy"],
                "final_ci95": points[-1]["ci95"],
                "time_to_target_s": hit["virtual_s"] if hit else None,
                "steady_time_to_target_s": hit["steady_s"] if hit else None,
                "speedup_vs_uniform": base["virtual_s"] / hit["virtual_s"] if hit and base and hit["virtual_s"] else None,
                "steady_speedup_vs_uniform": (base["steady_s"] / hit["steady_s"]
                                              if hit and base and hit["steady_s"] else None),
                "upload_bytes": hit["bytes_up"] if hit else None, "download_bytes": hit["bytes_down"] if hit else None,
                "upload_bytes_total": points[-1]["bytes_up"], "download_bytes_total": points[-1]["bytes_down"],
                "tiers_by_profile": run.get("tiers_by_profile", {}), "deployed": run.get("deployed", {})})
        deployed: dict[str, list[float]] = {}
        for seed_entry in arm["per_seed"]:
            for tier_arm, score in seed_entry["deployed"].items():
                deployed.setdefault(tier_arm, []).append(score["accuracy"])
        arm["deployed"] = {tier_arm: {"accuracy": statistics.fmean(values), "per_seed": values,
                                      "ci95": list(mean_interval(values)) if len(values) > 1 else None}
                           for tier_arm, values in sorted(deployed.items())}
        finals = [s["final_accuracy"] for s in arm["per_seed"] if s["final_accuracy"] is not None]
        arm["final_accuracy"] = statistics.fmean(finals) if finals else None
        arm["ci95"] = list(mean_interval(finals)) if len(finals) > 1 else None
        for key in ("time_to_target_s", "steady_time_to_target_s", "speedup_vs_uniform", "steady_speedup_vs_uniform",
                    "upload_bytes", "download_bytes", "upload_bytes_total", "download_bytes_total"):
            values = [s[key] for s in arm["per_seed"]]
            # a seed that never reached the target makes the median undefined when it is the middle one
            known = sorted(v for v in values if v is not None)
            arm[key] = statistics.median(values) if len(known) == len(values) and values else None
            arm[f"{key}_reached_in"] = len(known)
        summary["arms"][label] = arm
    summary["deployed_vs_pruned_once"] = deployed_vs_pruned_once(summary)
    return summary


def deployed_model(deployed: dict, prune_ratio: float) -> tuple[str, dict] | None:
    """The model a device of ``prune_ratio`` deploys at the end of a run: the tier at that ratio
    with the highest rank (the global adapter uncut) and the newest cut of the base (the most
    tuned; an untuned cut counts as oldest). None when no device trained that ratio."""
    at_ratio = [(label, d) for label, d in deployed.items() if abs(d["prune_ratio"] - prune_ratio) < 1e-9]
    if not at_ratio:
        return None
    return max(at_ratio, key=lambda item: (item[1].get("rank") or 0,
                                           -1 if item[1].get("cut_round") is None else item[1]["cut_round"]))


def deployed_vs_pruned_once(summary: dict) -> dict:
    """FedSpine's comparison: each arm's deployed model at ratio p against ``uniform@p:fedavg``,
    the base pruned once at p and tuned by every device with the reference's fixed rank (whose
    final accuracy is its deployed model's). Per seed and the mean difference with its interval."""
    from models.intervals import mean_interval

    out = {}
    for baseline_label, baseline in summary["arms"].items():
        head, _, _ = baseline_label.partition(":")
        if not head.startswith("uniform@p"):
            continue
        ratio = float(head.partition("@p")[2])
        for label, arm in summary["arms"].items():
            if label == baseline_label:
                continue
            pairs = []
            for seed_entry, base_entry in zip(arm["per_seed"], baseline["per_seed"]):
                chosen = deployed_model(seed_entry["deployed"], ratio)
                if chosen is None or base_entry["final_accuracy"] is None:
                    break
                pairs.append({"seed": seed_entry["seed"], "deployed": chosen[0], "accuracy": chosen[1]["accuracy"],
                              "pruned_once": base_entry["final_accuracy"],
                              "difference": chosen[1]["accuracy"] - base_entry["final_accuracy"]})
            else:
                if pairs:
                    differences = [p["difference"] for p in pairs]
                    out[f"{label} vs {baseline_label}"] = {
                        "prune_ratio": ratio, "per_seed": pairs, "mean_difference": statistics.fmean(differences),
                        "ci95": list(mean_interval(differences)) if len(differences) > 1 else None}
    return out


def table(summary: dict) -> str:
    """The headline table, one line per arm (medians over seeds; accuracy: mean [t interval])."""
    from models.intervals import formatted

    def seconds(value):
        return f"{value:,.0f}" if value is not None else "not all"

    def ratio(value):
        return f"{value:.2f}x" if value is not None else "-"

    def megabytes(value):
        return f"{value / 1e6:,.1f}" if value is not None else "-"

    def deployed_at_half(label: str, arm: dict) -> str:
        """The mean over seeds of the model a device at 50% sparsity deploys (a pruned-once arm's
        own final accuracy), or '-' when the arm has none."""
        if label.startswith("uniform@p0.5:"):
            values = [s["final_accuracy"] for s in arm["per_seed"]]
        else:
            chosen = [deployed_model(s["deployed"], 0.5) for s in arm["per_seed"]]
            values = [c[1]["accuracy"] for c in chosen if c is not None]
            if len(values) != len(arm["per_seed"]):
                return "-"
        return f"{100 * statistics.fmean(values):.1f}%" if values else "-"

    lines = [f"| arm | virtual s to target | vs uniform | steady s | vs uniform | final accuracy [95% CI over seeds] "
             f"| deployed at 50% sparsity | MB up to target | MB down to target | MB up, whole run |", "|" + "---|" * 10]
    for label, arm in summary["arms"].items():
        accuracy = formatted(arm["final_accuracy"], arm["ci95"], "accuracy") if arm["final_accuracy"] is not None else "-"
        lines.append(f"| {label} | {seconds(arm['time_to_target_s'])} | {ratio(arm['speedup_vs_uniform'])} | "
                     f"{seconds(arm['steady_time_to_target_s'])} | {ratio(arm['steady_speedup_vs_uniform'])} | "
                     f"{accuracy} | {deployed_at_half(label, arm)} | {megabytes(arm['upload_bytes'])} | "
                     f"{megabytes(arm['download_bytes'])} | {megabytes(arm['upload_bytes_total'])} |")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], summary: dict, out: Path) -> list[Path]:
    """Accuracy against virtual and steady time, the mean over seeds of the scored rounds with a
    band from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, xlabel, name in (("virtual_s", "virtual time (s), one-off artifact downloads included",
                               "accuracy_by_virtual_time.png"),
                              ("steady_s", "virtual time (s) without one-off artifact downloads",
                               "accuracy_by_steady_time.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        for label, per_seed in runs.items():
            rounds = [p["round"] for p in per_seed[0]["curve"] if p["accuracy"] is not None]
            xs, means, lows, highs = [], [], [], []
            for number in rounds:
                points = [next(p for p in run["curve"] if p["round"] == number) for run in per_seed]
                values = [p["accuracy"] for p in points if p["accuracy"] is not None]
                if len(values) != len(points):
                    continue
                xs.append(statistics.fmean(p[key] for p in points))
                means.append(statistics.fmean(values))
                lows.append(min(values))
                highs.append(max(values))
            line, = ax.plot(xs, means, marker="o", label=label)
            ax.fill_between(xs, lows, highs, alpha=0.15, color=line.get_color())
        ax.axhline(statistics.fmean(summary["targets"]), linestyle=":", color="black", label="target (mean over seeds)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (BBC News, 5 topics)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        paths.append(out / name)
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


# --- the command ----------------------------------------------------------------------------------

def parse_args(argv=None):
    from federated_accuracy import add_fleet_arguments, check_fleet_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fleet_arguments(parser)
    # The three profiles, budget phones included: which tiers fit them is part of what is compared.
    # 10 rounds (the accuracy bench runs 15): five arms on three seeds fit the 2 hours on 2 cores.
    parser.set_defaults(profile="mixed", rounds=10)
    parser.add_argument("--arms", default=DEFAULT_ARMS,
                        help="comma-separated configurator:strategy pairs; uniform:fedavg is the baseline and runs first")
    parser.add_argument("--configurator-options", type=json.loads, default={}, metavar="JSON",
                        help="per configurator, options replacing this comparison's (CONFIGURATOR_OPTIONS), "
                             "e.g. '{\"fedspine\": {\"prune_ratios\": [0.5], \"ranks\": [4, 8]}}'")
    parser.add_argument("--score-all-cuts", action="store_true",
                        help="score every pruned tier the devices trained with the final adapter (each cut of "
                             "the base, every rank), not only the model each ratio's devices deploy")
    parser.add_argument("--target", type=float, default=None,
                        help="a fixed target accuracy (default: per seed, uniform's final accuracy minus 1 point)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "heterogeneity")
    parser.add_argument("--run-root", type=Path, default=Path("runs") / "heterogeneity",
                        help="work folders, the shared artifact and prefix caches (exports happen once across runs)")
    args = parser.parse_args(argv)
    check_fleet_arguments(parser, args)
    try:
        args.arms = parse_arms(args.arms)
    except ValueError as exc:
        parser.error(str(exc))
    if not isinstance(args.configurator_options, dict) or not all(
            isinstance(v, dict) for v in args.configurator_options.values()):
        parser.error("--configurator-options must map configurator names to objects of options")
    args.options = {**CONFIGURATOR_OPTIONS, **args.configurator_options}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from federated_accuracy import cpu_model, experiment_tier, federated_run
    from fleet.local_coordinator import LocalCoordinator
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    args.run_root.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    settings["arms"] = [arm.label for arm in args.arms]
    results = {"settings": settings,
               "cpu": cpu_model(), "cores": __import__("os").cpu_count(), "options": args.options, "runs": {}}
    print(f"CPU: {results['cpu']} ({results['cores']} cores); seeds {args.seeds}; arms "
          f"{', '.join(arm.label for arm in args.arms)}", flush=True)
    partition = f"dirichlet:{args.alpha:g}"
    with LocalCoordinator(args.run_root / "coordinator", artifact_cache=args.run_root / "artifact-cache",
                          extra_args=["--tick", "0.5"]) as coordinator:
        for seed in args.seeds:
            for arm in args.arms:
                label = arm.label
                extra = {"configurator": arm.configurator, "strategy": arm.strategy,
                         "configurator_options": args.options.get(arm.configurator, {}), "prepare_tiers": "all"}
                if arm.prune_ratio:
                    extra["tier"] = {**experiment_tier(args), "prune_ratio": arm.prune_ratio}
                t0 = time.monotonic()
                report = federated_run(args, coordinator, partition, seed,
                                       args.run_root / f"{label.replace(':', '-').replace('@', '-')}-seed{seed}",
                                       job_extra=extra,
                                       summarize_outcomes=outcome_summary)
                run = {"seed": seed, "curve": curve(report), "wall_seconds": time.monotonic() - t0,
                       "tiers_by_profile": report["outcome_summary"]["tiers_by_profile"],
                       "deployed": score_deployed(args, coordinator, report), "report": report}
                results["runs"].setdefault(label, []).append(run)
                (args.out / "results.json").write_text(json.dumps(results, indent=1))
    runs = {label: [{k: v for k, v in run.items() if k != "report"} for run in per_seed]
            for label, per_seed in results["runs"].items()}
    summary = summarize(runs, args.seeds, args.target)
    results["wall_seconds"] = time.monotonic() - started
    summary.update(cpu=results["cpu"], wall_seconds=results["wall_seconds"],
                   heldout_examples=results["runs"]["uniform:fedavg"][0]["report"]["initial_evaluation"].get("num_examples"))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for path in plot(runs, summary, args.out):
        print(f"plot: {path}")
    print(table(summary))
    for label, comparison in summary["deployed_vs_pruned_once"].items():
        interval = comparison["ci95"]
        print(f"deployed at p{comparison['prune_ratio']:g}, {label}: {100 * comparison['mean_difference']:+.1f} points"
              + (f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]" if interval else "")
              + " (mean over seeds" + (", 95% t interval)" if interval else ")"))
    print(f"whole comparison: {results['wall_seconds'] / 60:.1f} min on {results['cpu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
