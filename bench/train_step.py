"""ExecuTorch runtime training step against eager PyTorch: time and peak memory, as ratios.

For each model, one artifact is exported, then two fresh processes train the same tier on the
same batches: one through the ExecuTorch runtime (``fleet.runtime_executorch``), one in eager
PyTorch with the same number of threads. Separate processes keep each peak RSS honest; both
are measured in this one run because the machines are shared and noisy, and only the ratios
are meant to be compared across runs.

    python bench/train_step.py                      # tiny and smollm2-135m
    python bench/train_step.py --models tiny --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The reference tier of the performance goals: LoRA r=8 on q/v of the last 8 layers, B=4, seq 128.
TIERS = {
    "tiny": dict(lora_rank=8, lora_layers=2, batch=4, seq=128),
    "smollm2-135m": dict(lora_rank=8, lora_layers=8, batch=4, seq=128),
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_batches(tokenizer, tier, count: int = 4):
    from models.batching import make_batches
    from models.corpora import bbc_news

    texts = [d.text for d in bbc_news("train")[: tier.batch * count]]
    return make_batches(tokenizer, texts, tier.batch, tier.seq)


def make_tier(model: str, quantize: str):
    from models.tier import Tier

    return Tier(quantize=quantize, **TIERS[model])


def measure(kind: str, model: str, quantize: str, artifact: Path, steps: int, threads: int) -> dict:
    """Run in a child process: train ``steps`` (+1 warm-up) steps, report step times and peak RSS.

    "At start" is the peak RSS once everything is loaded but before the first step: the
    runtime's artifact and batches, or the eager model (base loaded, pruned, LoRA attached).
    """
    import torch

    torch.set_num_threads(threads)
    from export.pipeline import build_training_model
    from models.registry import load_base_model

    tier = make_tier(model, quantize)
    if kind == "executorch":
        from transformers import AutoTokenizer

        from export.executorch import ADAPTER_DATA_FILE, PROGRAM_FILE
        from export.pipeline import TOKENIZER_DIR
        from fleet.runtime_executorch import ExecuTorchTrainer

        # Like a phone: only the artifact's files, never the eager model (it would set the peak).
        batches = bench_batches(AutoTokenizer.from_pretrained(str(artifact / TOKENIZER_DIR)), tier)
        trainer = ExecuTorchTrainer(artifact / PROGRAM_FILE, artifact / ADAPTER_DATA_FILE, lr=tier.train.lr)
        rss_loaded = peak_rss_mib()
        step = lambda ids, labels: trainer.step(ids, labels)  # noqa: E731
    else:
        from export.executorch import LanguageModelLoss

        base = load_base_model(model)
        batches = bench_batches(base.tokenizer, tier)
        peft_model = build_training_model(base, tier).peft_model
        rss_loaded = peak_rss_mib()
        module = LanguageModelLoss(peft_model)
        optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=tier.train.lr)

        def step(ids, labels):
            loss = module(ids, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.item()

    times = []
    for i in range(steps + 1):
        ids, labels = batches[i % len(batches)]
        start = time.perf_counter()
        step(ids, labels)
        times.append(time.perf_counter() - start)
    return {"kind": kind, "threads": threads, "first_step_s": times[0],
            "median_step_s": statistics.median(times[1:]), "min_step_s": min(times[1:]),
            "peak_rss_mib": peak_rss_mib(), "rss_before_training_mib": rss_loaded}


def run_child(kind: str, model: str, quantize: str, artifact: Path, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--models", model, "--quantize", quantize,
           "--artifact", str(artifact), "--steps", str(steps), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_artifact(model: str, quantize: str, workdir: Path) -> Path:
    """Export the benchmark tier once, in a child process.

    Not in this process: Linux carries a process's peak RSS across fork and exec into its
    children's ``ru_maxrss``, so a parent that had exported (gigabytes) would set a floor under
    every measurement that follows.
    """
    from export.manifest import MANIFEST_FILE

    out = workdir / f"{model}-{quantize}"
    if not (out / MANIFEST_FILE).is_file():
        print(f"[bench] exporting {model} ({quantize}) -> {out}", file=sys.stderr, flush=True)
        tier = TIERS[model]
        subprocess.run([sys.executable, "-m", "pockettune", "export", "--model", model, "--quantize", quantize,
                        "--lora-rank", str(tier["lora_rank"]), "--lora-layers", str(tier["lora_layers"]),
                        "--batch", str(tier["batch"]), "--seq", str(tier["seq"]), "--out", str(out), "--force",
                        "--no-progress"], check=True, cwd=REPO)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m", help="comma list (default tiny,smollm2-135m)")
    parser.add_argument("--quantize", default="none", choices=("none", "int8"), help="frozen base (default none)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both sides (default 1: the ExecuTorch portable runtime is single-threaded)")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "bench",
                        help="where artifacts are exported and reused (default artifacts/bench)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", choices=("executorch", "eager"), help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.models, args.quantize, args.artifact, args.steps, args.threads)))
        return 0

    from pockettune.cli import quiet_library_chatter

    quiet_library_chatter()
    results = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        artifact = ensure_artifact(model, args.quantize, args.workdir)
        runtime = run_child("executorch", model, args.quantize, artifact, args.steps, args.threads)
        eager = run_child("eager", model, args.quantize, artifact, args.steps, args.threads)
        results.append({"model": model, "quantize": args.quantize, "tier": TIERS[model],
                        "executorch": runtime, "eager": eager,
                        "step_time_ratio": runtime["median_step_s"] / eager["median_step_s"],
                        "peak_rss_ratio": runtime["peak_rss_mib"] / eager["peak_rss_mib"]})

    print(f"\nExecuTorch runtime vs eager PyTorch, {args.threads} thread(s), median of {args.steps} steps")
    print("| model | tier | quantize | ET step s | eager step s | step ratio | ET peak RSS MiB (at start) "
          "| eager peak RSS MiB (at start) | RSS ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["tier"]
        print(f"| {r['model']} | r{t['lora_rank']} last {t['lora_layers']} B{t['batch']} S{t['seq']} | {r['quantize']} "
              f"| {r['executorch']['median_step_s']:.3f} | {r['eager']['median_step_s']:.3f} | {r['step_time_ratio']:.2f} "
              f"| {r['executorch']['peak_rss_mib']:.0f} ({r['executorch']['rss_before_training_mib']:.0f}) "
              f"| {r['eager']['peak_rss_mib']:.0f} ({r['eager']['rss_before_training_mib']:.0f}) | {r['peak_rss_ratio']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
