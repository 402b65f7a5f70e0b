"""Federated proxy-tuning (FedPT) on SmolLM2-135M: is steering L with a federated small S as good
as tuning L itself, and what does it save the devices?

Three parts, each resumable (results accumulate in ``<out>/fedpt.json``):

``federated``
    For each task (BBC News, chatterbot QA) two federations with the same budget (devices,
    profiles, shards, rounds, places per round, local steps, batch, examples, optimizer),
    each through the real simulator and a real coordinator (``fleet.simulator``, as
    ``bench/federated_accuracy.py``):

    - **S**: the job's tier prunes SmolLM2-135M to half width (``prune_ratio`` 0.5, method
      ``width``: 4 of 9 heads, 768 of 1,536 MLP channels in every layer; ``models/pruning.py``);
    - **L**: the same tier unpruned (the ceiling: L tuned directly, as devices would have to).

    Both final global adapters are downloaded as PEFT directories.
``device``
    What tuning S instead of L costs a device: analytical FLOPs per training step
    (``fleet.hardware.training_flops``), peak RSS while training a few steps of each
    artifact in the ExecuTorch runtime (a fresh child process each, so the peak is its own),
    bytes per round (download and upload, from the runs) and the artifact's size.
``proxy``
    Scores, on each task's fixed held-out subset (the coordinator evaluator's examples):
    L zero-shot (fp32), S zero-shot, S tuned, L proxy-tuned
    (``logits_L + alpha * (logits_S_tuned - logits_S_base)``, ``models/proxy.py``) and L tuned
    directly; alpha is fixed in advance (1.0, the formula's own scale), never chosen on the
    held-out set. Every score comes with its 95% interval over the held-out examples (``ci95``:
    Wilson for accuracy, bootstrap for perplexity; ``models/intervals.py``).

    python bench/fedpt.py --out docs/fedpt                       # everything (about 60 min on 2 cores)
    python bench/fedpt.py --out docs/fedpt --only proxy          # rescore from the saved adapters
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("bbcnews", "chatterbot")
ARMS = {"S": 0.5, "L": 0.0}        # arm -> prune ratio of the job's tier
PARTS = ("federated", "device", "proxy", "predictions")


def job_for(args, arm: str) -> dict:
    """The job both arms share, differing only in the tier's pruning ratio."""
    from pockettune.demo import DEMO_JOB

    tier = {**DEMO_JOB["tier"], "prune_ratio": ARMS[arm], "prune_method": "width"}
    job = {**DEMO_JOB, "model": args.model, "tier": tier, "local_steps": args.local_steps, "lr": args.lr,
           "eval_examples": args.eval_examples}
    job.pop("task")
    return job


def run_dir(args, task: str, arm: str) -> Path:
    return args.runs / f"{task}-{arm}"


def federated(args, task: str, arm: str) -> dict:
    """One federation; returns its report (per-task outcomes summarized) and saves the final adapter."""
    from fleet.local_coordinator import LocalCoordinator
    from fleet.simulator import FleetSimulation, FleetSpec, format_report

    workdir = run_dir(args, task, arm)
    if workdir.exists():
        # A coordinator reusing an old instance folder would also serve that run's unfinished job.
        workdir.rename(workdir.with_name(f"{workdir.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    spec = FleetSpec(devices=args.devices, fleet=args.profile, rounds=args.rounds, task=task,
                     partition=args.partition, seed=args.seed, dropout=args.dropout, workers=args.workers,
                     devices_per_round=args.devices_per_round, min_updates=args.min_updates,
                     round_deadline_s=args.round_deadline, job=job_for(args, arm))
    cache = args.runs / "artifact-cache"
    cache.mkdir(parents=True, exist_ok=True)
    with LocalCoordinator(workdir, artifact_cache=cache, extra_args=["--tick", "0.5"]) as coordinator:
        sim = FleetSimulation(spec, coordinator.base_url, coordinator.admin_token, coordinator.enrollment_key,
                              workdir, progress=not args.no_progress)
        report = sim.run(timeout_s=3 * 3600)
        adapter = sim.download_adapter(report["job_id"], workdir / "final_adapter")
    print(f"\n{task}, {arm}:\n{format_report(report)}\n", flush=True)
    accepted = [o for o in report["outcomes"] if o["status"] == "accepted"]
    report["final_adapter"] = str(adapter)
    report["artifact_dir"] = str(artifact_dir(args, arm))
    report["accepted_tasks"] = len(accepted)
    report["examples_trained"] = sum(o.get("num_examples") or 0 for o in accepted)
    report["uploads"] = sum(1 for o in report["outcomes"] if o.get("bytes_up"))   # late ones too
    report.pop("outcomes")
    return report


def artifact_dir(args, arm: str) -> Path:
    """The arm's artifact in the coordinators' shared export cache: the one whose manifest has
    the arm's model and tier (found by reading manifests, so it does not depend on how the
    coordinator normalizes a tier into its cache key)."""
    from export.manifest import read_manifest

    wanted = job_for(args, arm)["tier"]
    for manifest_path in sorted((args.runs / "artifact-cache").glob("*/manifest.json")):
        data = read_manifest(manifest_path.parent).data
        tier = data["tier"]
        if (data["base_model"]["id"] == args.model
                and all(tier.get(k) == v for k, v in wanted.items() if k != "train")):
            return manifest_path.parent
    raise FileNotFoundError(f"no artifact for arm {arm} ({wanted}) under {args.runs / 'artifact-cache'}")


# --- device costs ------------------------------------------------------------------------------

def train_child(artifact: Path, steps: int, threads: int) -> dict:
    """In a fresh process: train ``steps`` (+1 warm-up) steps of the artifact in the runtime."""
    import torch
    from transformers import AutoTokenizer

    from export.executorch import ADAPTER_DATA_FILE
    from export.manifest import read_manifest
    from export.pipeline import TOKENIZER_DIR
    from fleet.runtime_executorch import ExecuTorchTrainer, set_runtime_threads
    from models.tasks import get_task

    torch.set_num_threads(threads)
    set_runtime_threads(threads)
    manifest = read_manifest(artifact).data
    tier = manifest["tier"]
    tokenizer = AutoTokenizer.from_pretrained(str(artifact / TOKENIZER_DIR))
    task = get_task("bbcnews")
    batches = task.batches(tokenizer, task.examples("train")[: tier["batch"] * 4], tier["batch"], tier["seq"])
    trainer = ExecuTorchTrainer.for_artifact(artifact, manifest, artifact / ADAPTER_DATA_FILE,
                                             lr=manifest["training"]["lr"])
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        trainer.step(*batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    return {"median_step_s": statistics.median(times[1:]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def device_costs(args, results: dict) -> dict:
    from export.manifest import read_manifest
    from fleet.hardware import training_flops

    costs = {}
    for arm in ARMS:
        artifact = artifact_dir(args, arm)
        manifest = read_manifest(artifact).data
        flops = training_flops(manifest)
        output = subprocess.run([sys.executable, __file__, "--child-train", str(artifact),
                                 "--steps", str(args.memory_steps)],
                                check=True, capture_output=True, text=True).stdout
        measured = json.loads(output.strip().splitlines()[-1])
        device_files = {name: f["size"] for name, f in manifest["files"].items() if f["device"]}
        per_round = {}
        for task in TASKS:
            report = results.get("federated", {}).get(f"{task}-{arm}")
            if report:
                rounds = report["rounds"]
                # Round 1 carries every device's one-off artifact download; later rounds only adapters.
                per_round[task] = {
                    "mb_down_round_1": rounds[0]["bytes_down"] / 1e6,
                    "mb_down_per_later_round": statistics.fmean(r["bytes_down"] for r in rounds[1:]) / 1e6
                    if len(rounds) > 1 else None,
                    "mb_up_per_round": statistics.fmean(r["bytes_up"] for r in rounds) / 1e6,
                    "kb_per_upload": sum(r["bytes_up"] for r in rounds)
                    / max(1, report.get("uploads") or sum(r["accepted"] + r["rejected"] for r in rounds)) / 1e3,
                    "mb_down_total": sum(r["bytes_down"] for r in rounds) / 1e6,
                    "mb_up_total": sum(r["bytes_up"] for r in rounds) / 1e6,
                }
        costs[arm] = {"artifact": str(artifact), "pruned_model": manifest["pruned_model"],
                      "gflops_per_step": flops.total / 1e9,
                      "gflops_forward": flops.forward / 1e9,
                      "device_download_mb": sum(device_files.values()) / 1e6,
                      "device_files_mb": {k: v / 1e6 for k, v in device_files.items()},
                      "lora_tensors": len(manifest["lora"]["tensors"]),
                      **measured, "per_round": per_round}
        print(f"device {arm}: {json.dumps(costs[arm], indent=1)}", flush=True)
    return costs


# --- proxy scoring ---------------------------------------------------------------------------

def score_line(label: str, evaluation: dict) -> str:
    """``label: accuracy 0.690 [0.594, 0.772] (loss 1.234, 12 s)``: a task's ``evaluate`` result
    with its 95% interval over the held-out examples (Wilson for accuracy, bootstrap for perplexity)."""
    from models.intervals import formatted

    metric = evaluation["metric"]
    extras = [f"loss {evaluation['loss']:.3f}" if evaluation.get("loss") is not None else "",
              f"{evaluation['seconds']:.0f} s" if evaluation.get("seconds") is not None else ""]
    extras = ", ".join(e for e in extras if e)
    return (f"{label}: {metric} {formatted(evaluation['value'], evaluation.get('ci95'), metric)}"
            + (f" ({extras})" if extras else ""))


def proxy_scores(args, results: dict) -> dict:
    import torch

    from export.server_model import load_artifact_model, set_adapter_tensors
    from models.adapters import load_adapter
    from models.proxy import ProxyTunedLM
    from models.registry import load_base_model
    from models.tasks import get_task

    torch.set_num_threads(args.threads)
    large = load_base_model(args.model)
    scores = {}
    for task_name in TASKS:
        fed = results.get("federated", {})
        if f"{task_name}-S" not in fed or f"{task_name}-L" not in fed:
            print(f"proxy: {task_name} skipped (run the federated part first)", flush=True)
            continue
        task = get_task(task_name)
        seq = int(job_for(args, "S")["tier"]["seq"])
        examples = task.eval_examples(args.eval_examples)
        row = {}

        def timed(label, fn):
            started = time.perf_counter()
            with torch.inference_mode():
                row[label] = {**fn(), "seconds": time.perf_counter() - started}     # with the task's ci95
            print(score_line(f"{task_name}: {label}", row[label]), flush=True)

        timed("L zero-shot (fp32)", lambda: task.evaluate(large.model, large.tokenizer, examples, seq))
        small = load_artifact_model(Path(fed[f"{task_name}-S"]["artifact_dir"]))
        timed("S zero-shot", lambda: task.evaluate(small.peft_model, small.tokenizer, examples, seq))
        tensors, _ = load_adapter(Path(fed[f"{task_name}-S"]["final_adapter"]))
        set_adapter_tensors(small.peft_model, tensors)
        timed("S tuned", lambda: task.evaluate(small.peft_model, small.tokenizer, examples, seq))
        for alpha in args.alphas:
            proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small.peft_model, small.tokenizer,
                                           alpha=alpha)
            timed(f"L proxy-tuned (alpha {alpha:g})", lambda: task.evaluate(proxy, proxy.tokenizer, examples, seq))
        del small
        big = load_artifact_model(Path(fed[f"{task_name}-L"]["artifact_dir"]))
        timed("L zero-shot (int8, devices' base)", lambda: task.evaluate(big.peft_model, big.tokenizer, examples, seq))
        tensors, _ = load_adapter(Path(fed[f"{task_name}-L"]["final_adapter"]))
        set_adapter_tensors(big.peft_model, tensors)
        timed("L tuned directly", lambda: task.evaluate(big.peft_model, big.tokenizer, examples, seq))
        del big
        scores[task_name] = row
    return scores


def bbc_predictions(args, results) -> dict:
    """Which topic each model picks on the BBC held-out articles (L, S_base, S_tuned, proxy at alpha 1).

    Accuracy alone does not say *how* the proxy goes wrong; the counts per predicted topic
    show whose biases the offset carries.
    """
    import collections

    import torch

    from export.server_model import load_artifact_model, set_adapter_tensors
    from models.adapters import load_adapter
    from models.intervals import accuracy_interval
    from models.proxy import ProxyTunedLM
    from models.registry import load_base_model
    from models.tasks import get_task
    from models.tasks.bbcnews import BBCNewsTopics

    torch.set_num_threads(args.threads)
    fed = results["federated"]["bbcnews-S"]
    task = get_task("bbcnews")
    examples = task.eval_examples(args.eval_examples)
    seq = int(job_for(args, "S")["tier"]["seq"])
    large = load_base_model(args.model)
    small = load_artifact_model(Path(fed["artifact_dir"]))
    set_adapter_tensors(small.peft_model, load_adapter(Path(fed["final_adapter"]))[0])
    tokenizer = large.tokenizer
    label_ids = [tokenizer(f" {label}", add_special_tokens=False)["input_ids"] for label in task.labels]
    rows = [task.prompt_ids(tokenizer, e, seq, reserve=max(map(len, label_ids))) for e in examples]
    true = [task.labels.index(e.label) for e in examples]
    out = {"labels": list(task.labels), "true": dict(collections.Counter(e.label for e in examples))}

    def count(model, name):
        with torch.inference_mode():
            scores = BBCNewsTopics._label_log_likelihoods(model, tokenizer, rows, label_ids, 16)
        predicted = scores.argmax(1).tolist()
        correct = sum(p == t for p, t in zip(predicted, true))
        out[name] = {"predicted": {label: predicted.count(i) for i, label in enumerate(task.labels)},
                     "accuracy": correct / len(true), "ci95": list(accuracy_interval(correct, len(true))),
                     "mean_log_prob_by_label": [round(float(v), 2) for v in scores.mean(0)]}
        print(prediction_line(name, out[name]), flush=True)

    count(large.model, "L")
    with small.peft_model.disable_adapter():
        count(small.peft_model, "S_base")
    count(small.peft_model, "S_tuned")
    count(ProxyTunedLM.from_peft(large.model, tokenizer, small.peft_model, small.tokenizer, alpha=1.0),
          "proxy_alpha_1")
    (args.out / "bbcnews_predictions.json").write_text(json.dumps(out, indent=1))
    return out


def prediction_line(name: str, counts: dict) -> str:
    """One model's line of :func:`bbc_predictions`: accuracy with its 95% Wilson interval, then
    how many articles it put under each topic."""
    from models.intervals import formatted

    predicted = ", ".join(f"{label} {n}" for label, n in counts["predicted"].items())
    line = f"{name}: accuracy {formatted(counts['accuracy'], counts.get('ci95'), 'accuracy')}; predicted {predicted}"
    if counts.get("mean_log_prob_by_label"):
        line += f"; mean log p by label {counts['mean_log_prob_by_label']}"
    return line


def main(argv=None) -> int:
    from fleet.cli import FLEETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=None, help="default: the demo's (8)")
    parser.add_argument("--lr", type=float, default=None, help="default: the demo's (0.1)")
    parser.add_argument("--profile", choices=sorted(FLEETS), default="mixed")
    parser.add_argument("--partition", default="iid")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--devices-per-round", type=int, default=5)
    parser.add_argument("--min-updates", type=int, default=4)
    parser.add_argument("--round-deadline", type=float, default=900.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--alphas", type=lambda s: [float(x) for x in s.split(",")], default=[1.0],
                        help="comma list of alpha values to score (default 1.0)")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list (default bbcnews,chatterbot)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma list of federated arms to run (default S,L)")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only these parts (repeatable)")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "fedpt")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fedpt")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--child-train", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from models.console import quiet_library_chatter
    from pockettune.demo import DEMO_JOB

    quiet_library_chatter()
    if args.child_train:
        print(json.dumps(train_child(args.child_train, args.steps, 1)))
        return 0
    args.local_steps = args.local_steps or DEMO_JOB["local_steps"]
    args.lr = args.lr or DEMO_JOB["lr"]
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "fedpt.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("federated", {})
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                           if k not in ("child_train", "steps")}

    def save():
        results_path.write_text(json.dumps(results, indent=2))

    parts = args.only or list(PARTS)
    tasks = [t for t in args.tasks.split(",") if t]
    if "federated" in parts:
        for task in tasks:
            for arm in [a for a in args.arms.split(",") if a]:
                results["federated"][f"{task}-{arm}"] = federated(args, task, arm)
                save()
    if "device" in parts:
        results["device"] = device_costs(args, results)
        save()
    if "proxy" in parts:
        results["proxy"] = {**results.get("proxy", {}), **proxy_scores(args, results)}
        save()
    if "predictions" in parts:
        results["bbcnews_predictions"] = bbc_predictions(args, results)
        save()
    print(f"results: {results_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
