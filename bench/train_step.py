"""On-device training speed and memory: ExecuTorch and ONNX Runtime against eager PyTorch, in one run.

Two measurements, each as ratios against a baseline measured in the same run (the machines
are shared and noisy; only ratios are meant to be compared across runs):

1. **Step.** One training step of the reference tier (LoRA r8 on q/v; SmolLM2-135M: last 8 of
   30 layers, batch 4, seq 128), through the runtime with XNNPACK kernels (what PocketTune
   ships), through the runtime with the portable kernels (the program as first shipped),
   through ONNX Runtime training (``onnxruntime-training-cpu`` 1.19.2, the second backend) and
   in eager PyTorch on the model the artifact was compiled from, all with the same number of
   threads and plain SGD. Median step time and each process's peak RSS.
2. **Epoch with frozen-prefix caching.** One epoch over a device's local examples with LoRA in
   the last k layers: the whole program against the top program on cached prefix outputs
   (every epoch and round after a device has seen its examples once under one base model),
   and the first epoch, which also computes each example's prefix once.

Every measurement runs in a fresh child process so its peak RSS is its own, and artifacts are
exported in child processes too (Linux carries a parent's peak RSS into its children).

    python bench/train_step.py                                   # tiny and smollm2-135m, 1 thread
    python bench/train_step.py --models tiny --steps 10
    python bench/train_step.py --models smollm2-135m --threads 2 --json out.json
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
#: LoRA depths k compared with and without prefix caching (tiny has 4 layers, SmolLM2 30).
PREFIX_DEPTHS = {"tiny": (2,), "smollm2-135m": (4, 8)}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_batches(tokenizer, batch: int, seq: int, count: int):
    """``count`` batches of distinct BBC News articles, tokenized and padded as devices do."""
    from models.batching import make_batches
    from models.corpora import bbc_news

    texts = [d.text for d in bbc_news("train")[: batch * count]]
    return make_batches(tokenizer, texts, batch, seq)


# --- child processes --------------------------------------------------------------------------

def _set_threads(threads: int, executorch: bool = True) -> None:
    """torch's intra-op pool and, unless measuring another runtime, ExecuTorch's threadpool.

    Touching the threadpool loads ExecuTorch's runtime library, which neither eager PyTorch
    nor an ONNX Runtime device carries: their measurements leave it out.
    """
    import torch

    torch.set_num_threads(threads)
    if executorch:
        from fleet.runtime_executorch import set_runtime_threads

        set_runtime_threads(threads)


def _runtime_trainer(artifact: Path, threads: int = 1):
    """The artifact's trainer and tokenizer, loaded like a phone: only the artifact's files."""
    from transformers import AutoTokenizer

    from export.executorch import ADAPTER_DATA_FILE
    from export.manifest import read_manifest
    from export.pipeline import TOKENIZER_DIR
    from fleet.runtime_executorch import ExecuTorchTrainer

    manifest = read_manifest(artifact).data
    tokenizer = AutoTokenizer.from_pretrained(str(artifact / TOKENIZER_DIR))
    if manifest["format"] == "onnxruntime":
        from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter

        start = read_start_adapter(artifact / manifest["lora"]["initial_adapter_dir"] / "adapter_model.safetensors")
        return OnnxRuntimeTrainer(artifact, manifest, start, lr=manifest["training"]["lr"], threads=threads), \
            tokenizer, manifest
    trainer = ExecuTorchTrainer.for_artifact(artifact, manifest, artifact / ADAPTER_DATA_FILE,
                                             lr=manifest["training"]["lr"])
    return trainer, tokenizer, manifest


def measure_step(kind: str, model: str, artifact: Path, steps: int, threads: int) -> dict:
    """Train ``steps`` (+1 warm-up) steps; step times and peak RSS (also "at start": loaded, untrained)."""
    import torch

    _set_threads(threads, executorch=kind in ("xnnpack", "portable"))
    tier = TIERS[model]
    if kind == "eager":
        from export.executorch import LanguageModelLoss
        from export.pipeline import build_training_model
        from models.registry import load_base_model
        from models.tier import Tier

        base = load_base_model(model)
        batches = bench_batches(base.tokenizer, tier["batch"], tier["seq"], 4)
        peft_model = build_training_model(base, Tier(**tier)).peft_model
        module = LanguageModelLoss(peft_model)
        optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)

        def step(ids, labels):
            loss = module(ids, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        trainer, tokenizer, _ = _runtime_trainer(artifact, threads)
        batches = bench_batches(tokenizer, tier["batch"], tier["seq"], 4)
        step = trainer.step
    rss_loaded = peak_rss_mib()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        step(*batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    return {"kind": kind, "threads": threads, "first_step_s": times[0], "median_step_s": statistics.median(times[1:]),
            "peak_rss_mib": peak_rss_mib(), "rss_before_training_mib": rss_loaded}


def measure_epoch(artifact: Path, examples: int, threads: int) -> dict:
    """One epoch over ``examples`` examples, timed after a warm-up step on another example.

    For a prefix-cache artifact, first the device's once-per-example work, as a device does it
    before its first step: load the prefix program, compute every example's prefix, release it
    ("prefix_seconds"); only then is the training program loaded. Peak RSS covers both phases.
    """
    _set_threads(threads)
    trainer, tokenizer, manifest = _runtime_trainer(artifact)
    batch, seq = manifest["tier"]["batch"], manifest["tier"]["seq"]
    count = max(1, examples // batch)
    everything = bench_batches(tokenizer, batch, seq, count + 1)
    batches, warmup = everything[:count], everything[count]     # the warm-up example is outside the epoch
    result = {"examples": count * batch, "steps": count, "threads": threads}
    if trainer.prefix is not None:
        start = time.perf_counter()
        trainer.prepare(everything)
        result["prefix_seconds"] = time.perf_counter() - start
    trainer.step(*warmup)                       # loads the training program and packs its weights
    start = time.perf_counter()
    for ids, labels in batches:
        trainer.step(ids, labels)
    result["epoch_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def run_child(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, __file__, *args, "--threads", str(threads)], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_artifact(model: str, workdir: Path, lora_layers: int, kernels: str, prefix_cache: bool,
                    artifact_format: str = "executorch") -> Path:
    """Export a benchmark artifact once (reused across runs), in a child process."""
    from export.manifest import MANIFEST_FILE

    tier = TIERS[model]
    variant = kernels if artifact_format == "executorch" else artifact_format
    name = f"{model}-k{lora_layers}-{variant}{'-prefix' if prefix_cache else ''}"
    out = workdir / name
    if not (out / MANIFEST_FILE).is_file():
        print(f"[bench] exporting {name}", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "pockettune", "export", "--model", model, "--lora-rank", str(tier["lora_rank"]),
                   "--lora-layers", str(lora_layers), "--batch", str(tier["batch"]), "--seq", str(tier["seq"]),
                   "--kernels", kernels, "--format", artifact_format, "--out", str(out), "--force", "--no-progress"]
        subprocess.run(command + (["--prefix-cache"] if prefix_cache else []), check=True, cwd=REPO)
    return out


# --- the report -------------------------------------------------------------------------------

def step_table(results: list[dict], threads: int, steps: int) -> str:
    lines = [f"Training step, runtime vs eager PyTorch, {threads} thread(s), median of {steps} steps",
             "| model | tier | program | step s | vs eager | peak RSS MiB (at start) | vs eager |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        t, eager = r["tier"], r["eager"]
        tier = f"r{t['lora_rank']} last {t['lora_layers']} B{t['batch']} S{t['seq']}"
        for label, m in (("ExecuTorch, XNNPACK", r["xnnpack"]), ("ExecuTorch, portable", r.get("portable")),
                         ("ONNX Runtime training", r.get("onnxruntime")), ("eager PyTorch", eager)):
            if m is None:
                continue
            lines.append(f"| {r['model']} | {tier} | {label} | {m['median_step_s']:.3f} "
                         f"| {m['median_step_s'] / eager['median_step_s']:.2f} "
                         f"| {m['peak_rss_mib']:.0f} ({m['rss_before_training_mib']:.0f}) "
                         f"| {m['peak_rss_mib'] / eager['peak_rss_mib']:.2f} |")
    return "\n".join(lines)


def epoch_table(results: list[dict], threads: int) -> str:
    lines = [f"Epoch with and without frozen-prefix caching, ExecuTorch XNNPACK, {threads} thread(s)",
             "| model | LoRA layers | examples | whole program s | prefix cached s | ratio "
             "| first epoch: prefix once + epoch s | ratio | peak RSS MiB whole / cached |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        whole, cached = r["whole"], r["cached"]
        first = cached["prefix_seconds"] + cached["epoch_s"]
        lines.append(f"| {r['model']} | {r['k']} of {r['depth']} | {whole['examples']} | {whole['epoch_s']:.2f} "
                     f"| {cached['epoch_s']:.2f} | {cached['epoch_s'] / whole['epoch_s']:.2f} "
                     f"| {first:.2f} | {first / whole['epoch_s']:.2f} "
                     f"| {whole['peak_rss_mib']:.0f} / {cached['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m", help="comma list (default tiny,smollm2-135m)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for every side: torch's intra-op pool and the runtime's threadpool (default 1)")
    parser.add_argument("--epoch-examples", type=int, default=32, help="examples in the prefix-caching epoch (default 32)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: step, portable, onnxruntime, epoch")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "bench",
                        help="where artifacts are exported and reused (default artifacts/bench)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", choices=("xnnpack", "portable", "onnxruntime", "eager", "epoch"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.threads < 1 or args.epoch_examples < 1:
        parser.error("--steps, --threads and --epoch-examples must be >= 1")

    if args.child == "epoch":
        print(json.dumps(measure_epoch(args.artifact, args.epoch_examples, args.threads)))
        return 0
    if args.child:
        print(json.dumps(measure_step(args.child, args.models, args.artifact, args.steps, args.threads)))
        return 0

    from pockettune.cli import quiet_library_chatter

    quiet_library_chatter()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in TIERS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(TIERS)}")
    steps, epochs = [], []
    for model in models:
        k = TIERS[model]["lora_layers"]
        child = ["--models", model, "--steps", str(args.steps)]
        if "step" not in skip:
            row = {"model": model, "tier": TIERS[model]}
            row["xnnpack"] = run_child(["--child", "xnnpack", *child, "--artifact",
                                        str(ensure_artifact(model, args.workdir, k, "xnnpack", False))], args.threads)
            if "portable" not in skip:
                row["portable"] = run_child(["--child", "portable", *child, "--artifact",
                                             str(ensure_artifact(model, args.workdir, k, "portable", False))],
                                            args.threads)
            if "onnxruntime" not in skip:
                row["onnxruntime"] = run_child(["--child", "onnxruntime", *child, "--artifact",
                                                str(ensure_artifact(model, args.workdir, k, "xnnpack", False,
                                                                    "onnxruntime"))], args.threads)
            row["eager"] = run_child(["--child", "eager", *child], args.threads)
            steps.append(row)
        if "epoch" in skip:
            continue
        from export.manifest import read_manifest

        for depth_k in PREFIX_DEPTHS[model]:
            whole = ensure_artifact(model, args.workdir, depth_k, "xnnpack", False)
            cached = ensure_artifact(model, args.workdir, depth_k, "xnnpack", True)
            epoch = ["--child", "epoch", "--epoch-examples", str(args.epoch_examples)]
            epochs.append({"model": model, "k": depth_k,
                           "depth": read_manifest(whole).data["pruned_model"]["num_hidden_layers"],
                           "whole": run_child([*epoch, "--artifact", str(whole)], args.threads),
                           "cached": run_child([*epoch, "--artifact", str(cached)], args.threads)})

    if steps:
        print()
        print(step_table(steps, args.threads, args.steps))
    if epochs:
        print()
        print(epoch_table(epochs, args.threads))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "steps": steps, "epochs": epochs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
