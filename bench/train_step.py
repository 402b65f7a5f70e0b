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
3. **Label-position head** (``pockettune export --loss-positions K``). On batches of the
   ``bbcnews`` task (the topic word is the only label), each program against the same program
   with the LM head at the first K labelled positions per row only: the whole program's step
   (ExecuTorch XNNPACK, ONNX Runtime training, eager PyTorch) and the prefix-cached top
   program's epoch at each k. K is the longest topic word in the model's tokens (SmolLM2: 1,
   tiny's byte tokens: 14), so every batch fits.

Every measurement runs in a fresh child process so its peak RSS is its own, and artifacts are
exported in child processes too (Linux carries a parent's peak RSS into its children).

    python bench/train_step.py                                   # tiny and smollm2-135m, 1 thread
    python bench/train_step.py --models tiny --steps 10
    python bench/train_step.py --models smollm2-135m --threads 2 --json out.json
    python bench/train_step.py --models smollm2-135m --skip step,epoch --prepare-only   # export only
    python bench/train_step.py --models smollm2-135m --skip step,epoch                 # label-position head
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import platform
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
#: Batches: ``text`` labels every token of an article (language modelling), ``bbcnews`` only the
#: topic word after the article (the task the label-position head is for).
DATA = ("text", "bbcnews")
LABEL_TASK = "bbcnews"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
    """The CPU's model name (as ``lscpu`` prints it) and the cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def bench_batches(tokenizer, batch: int, seq: int, count: int, data: str = "text"):
    """``count`` batches of distinct BBC News articles, tokenized and padded as devices do:
    every token labelled (``text``) or only the topic word (``bbcnews``, the task's own encoding)."""
    if data == LABEL_TASK:
        from models.tasks import get_task

        task = get_task(LABEL_TASK)
        return task.batches(tokenizer, task.examples("train")[: batch * count], batch, seq)
    from models.batching import make_batches
    from models.corpora import bbc_news

    texts = [d.text for d in bbc_news("train")[: batch * count]]
    return make_batches(tokenizer, texts, batch, seq)


def label_loss_positions(model: str) -> int:
    """K for the label-position arms: the longest topic word of the task in ``model``'s tokens."""
    from models.registry import load_base_model
    from models.tasks import get_task

    tokenizer = load_base_model(model).tokenizer
    return max(len(tokenizer(f" {label}", add_special_tokens=False)["input_ids"])
               for label in get_task(LABEL_TASK).labels)


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
    """The artifact's trainer and tokenizer, loaded like a phone: only the artifact's files, in the
    runtime its format names, from the artifact's own initial adapter."""
    from transformers import AutoTokenizer

    from export.formats import get_format
    from export.manifest import read_manifest
    from export.pipeline import TOKENIZER_DIR
    from fleet.runtimes import get_runtime

    manifest = read_manifest(artifact).data
    tokenizer = AutoTokenizer.from_pretrained(str(artifact / TOKENIZER_DIR))
    start = artifact / get_format(manifest["format"]).initial_start_adapter(manifest)
    trainer = get_runtime(manifest["format"]).trainer(artifact, manifest, start, {"lr": manifest["training"]["lr"]},
                                                      threads=threads)
    return trainer, tokenizer, manifest


def measure_step(kind: str, model: str, artifact: Path, steps: int, threads: int, data: str = "text",
                 loss_positions: int | None = None) -> dict:
    """Train ``steps`` (+1 warm-up) steps; step times and peak RSS (also "at start": loaded, untrained).

    ``loss_positions`` applies to eager PyTorch (its label-position loss); an artifact's
    comes from its manifest.
    """
    import torch

    _set_threads(threads, executorch=kind in ("xnnpack", "portable"))
    tier = TIERS[model]
    if kind == "eager":
        from export.executorch import LanguageModelLoss
        from export.pipeline import build_training_model
        from models.registry import load_base_model
        from models.tier import Tier

        base = load_base_model(model)
        batches = bench_batches(base.tokenizer, tier["batch"], tier["seq"], 4, data)
        peft_model = build_training_model(base, Tier(**tier, loss_positions=loss_positions)).peft_model
        module = LanguageModelLoss(peft_model, loss_positions)
        optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.05)

        def step(ids, labels):
            loss = module(ids, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        trainer, tokenizer, manifest = _runtime_trainer(artifact, threads)
        batches = bench_batches(tokenizer, tier["batch"], tier["seq"], 4, data)
        step = trainer.step
        loss_positions = manifest["program"].get("loss_positions")
    rss_loaded = peak_rss_mib()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        step(*batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    return {"kind": kind, "threads": threads, "data": data, "loss_positions": loss_positions,
            "first_step_s": times[0], "median_step_s": statistics.median(times[1:]),
            "peak_rss_mib": peak_rss_mib(), "rss_before_training_mib": rss_loaded}


def measure_epoch(artifact: Path, examples: int, threads: int, data: str = "text") -> dict:
    """One epoch over ``examples`` examples, timed after a warm-up step on another example.

    For a prefix-cache artifact, first the device's once-per-example work, as a device does it
    before its first step: load the prefix program, compute every example's prefix, release it
    ("prefix_seconds"); only then is the training program loaded. Peak RSS covers both phases.
    """
    _set_threads(threads)
    trainer, tokenizer, manifest = _runtime_trainer(artifact)
    batch, seq = manifest["tier"]["batch"], manifest["tier"]["seq"]
    count = max(1, examples // batch)
    everything = bench_batches(tokenizer, batch, seq, count + 1, data)
    batches, warmup = everything[:count], everything[count]     # the warm-up example is outside the epoch
    result = {"examples": count * batch, "steps": count, "threads": threads, "data": data,
              "loss_positions": manifest["program"].get("loss_positions")}
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
                    artifact_format: str = "executorch", loss_positions: int | None = None) -> Path:
    """Export a benchmark artifact once (reused across runs), in a child process."""
    from export.manifest import MANIFEST_FILE

    tier = TIERS[model]
    variant = kernels if artifact_format == "executorch" else artifact_format
    name = (f"{model}-k{lora_layers}-{variant}{'-prefix' if prefix_cache else ''}"
            f"{f'-lp{loss_positions}' if loss_positions is not None else ''}")
    out = workdir / name
    if not (out / MANIFEST_FILE).is_file():
        print(f"[bench] exporting {name}", file=sys.stderr, flush=True)
        command = [sys.executable, "-m", "pockettune", "export", "--model", model, "--lora-rank", str(tier["lora_rank"]),
                   "--lora-layers", str(lora_layers), "--batch", str(tier["batch"]), "--seq", str(tier["seq"]),
                   "--kernels", kernels, "--format", artifact_format, "--out", str(out), "--force", "--no-progress"]
        command += ["--prefix-cache"] if prefix_cache else []
        command += ["--loss-positions", str(loss_positions)] if loss_positions is not None else []
        subprocess.run(command, check=True, cwd=REPO)
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


def label_table(results: list[dict], threads: int, repeats: int) -> str:
    best = f", best of {repeats}" if repeats > 1 else ""
    lines = [f"Label-position head on {LABEL_TASK} batches: the same program with the LM head at every position "
             f"(full) and at the first K labelled positions per row, {threads} thread(s){best}",
             "| model | program | measured | K | full head s | label positions s | ratio | peak RSS MiB full / label |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        full, label, key = r["full"], r["label"], r["time_key"]
        lines.append(f"| {r['model']} | {r['program']} | {r['measured']} | {r['loss_positions']} | {full[key]:.3f} "
                     f"| {label[key]:.3f} | **{label[key] / full[key]:.2f}** "
                     f"| {full['peak_rss_mib']:.0f} / {label['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def label_arms(model: str, args, skip: set[str], loss_positions: int) -> list[dict]:
    """The label-position comparisons for ``model``: each a full-head and a label-position child."""
    k = TIERS[model]["lora_layers"]
    step = ["--models", model, "--steps", str(args.steps), "--data", LABEL_TASK]

    def artifact(depth, prefix=False, artifact_format="executorch", label=False):
        return ["--artifact", str(ensure_artifact(model, args.workdir, depth, "xnnpack", prefix, artifact_format,
                                                  loss_positions if label else None))]

    arms = [{"program": "ExecuTorch, XNNPACK", "measured": f"whole program (last {k}), median step",
             "time_key": "median_step_s", "full": ["--child", "xnnpack", *step, *artifact(k)],
             "label": ["--child", "xnnpack", *step, *artifact(k, label=True)]}]
    if "onnxruntime" not in skip:
        arms.append({"program": "ONNX Runtime training", "measured": f"whole program (last {k}), median step",
                     "time_key": "median_step_s",
                     "full": ["--child", "onnxruntime", *step, *artifact(k, artifact_format="onnxruntime")],
                     "label": ["--child", "onnxruntime", *step,
                               *artifact(k, artifact_format="onnxruntime", label=True)]})
    if "eager" not in skip:
        arms.append({"program": "eager PyTorch", "measured": f"whole model (last {k}), median step",
                     "time_key": "median_step_s", "full": ["--child", "eager", *step],
                     "label": ["--child", "eager", *step, "--loss-positions", str(loss_positions)]})
    epoch = ["--child", "epoch", "--epoch-examples", str(args.epoch_examples), "--data", LABEL_TASK]
    for depth in PREFIX_DEPTHS[model]:
        arms.append({"program": "ExecuTorch, XNNPACK",
                     "measured": f"prefix-cached top program (last {depth}), epoch of {args.epoch_examples}",
                     "time_key": "epoch_s", "full": [*epoch, *artifact(depth, prefix=True)],
                     "label": [*epoch, *artifact(depth, prefix=True, label=True)]})
    return arms


def prepare_artifacts(models: list[str], args, skip: set[str]) -> None:
    """Export every artifact the selected parts measure (so that no export runs between two
    measurements, and so that ``--prepare-only`` can do the slow part while the machine is busy)."""
    for model in models:
        k = TIERS[model]["lora_layers"]
        if "step" not in skip:
            ensure_artifact(model, args.workdir, k, "xnnpack", False)
            if "portable" not in skip:
                ensure_artifact(model, args.workdir, k, "portable", False)
            if "onnxruntime" not in skip:
                ensure_artifact(model, args.workdir, k, "xnnpack", False, "onnxruntime")
        if "epoch" not in skip:
            for depth in PREFIX_DEPTHS[model]:
                ensure_artifact(model, args.workdir, depth, "xnnpack", False)
                ensure_artifact(model, args.workdir, depth, "xnnpack", True)
        if "label" not in skip:
            label_arms(model, args, skip, run_child(["--child", "loss-positions", "--models", model], args.threads))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m", help="comma list (default tiny,smollm2-135m)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for every side: torch's intra-op pool and the runtime's threadpool (default 1)")
    parser.add_argument("--epoch-examples", type=int, default=32, help="examples in the prefix-caching epoch (default 32)")
    parser.add_argument("--skip", default="",
                        help="comma list of parts to skip: step, portable, onnxruntime, epoch, label (the "
                             "label-position table), eager (its eager arm)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="label-position table: measure each full/label pair this many times, alternating, "
                             "and keep each side's best (default 1)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="export the artifacts the selected parts need, then stop (measure later, when the "
                             "machine is quiet)")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "bench",
                        help="where artifacts are exported and reused (default artifacts/bench)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--child", choices=("xnnpack", "portable", "onnxruntime", "eager", "epoch", "loss-positions"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", choices=DATA, default="text", help=argparse.SUPPRESS)
    parser.add_argument("--loss-positions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.threads < 1 or args.epoch_examples < 1 or args.repeats < 1:
        parser.error("--steps, --threads, --epoch-examples and --repeats must be >= 1")

    if args.child == "loss-positions":
        print(json.dumps(label_loss_positions(args.models)))
        return 0
    if args.child == "epoch":
        print(json.dumps(measure_epoch(args.artifact, args.epoch_examples, args.threads, args.data)))
        return 0
    if args.child:
        print(json.dumps(measure_step(args.child, args.models, args.artifact, args.steps, args.threads, args.data,
                                      args.loss_positions)))
        return 0

    from models.console import quiet_library_chatter

    quiet_library_chatter()
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in TIERS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(TIERS)}")
    prepare_artifacts(models, args, skip)
    if args.prepare_only:
        return 0
    steps, epochs, labels = [], [], []
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
        if "epoch" not in skip:
            from export.manifest import read_manifest

            for depth_k in PREFIX_DEPTHS[model]:
                whole = ensure_artifact(model, args.workdir, depth_k, "xnnpack", False)
                cached = ensure_artifact(model, args.workdir, depth_k, "xnnpack", True)
                epoch = ["--child", "epoch", "--epoch-examples", str(args.epoch_examples)]
                epochs.append({"model": model, "k": depth_k,
                               "depth": read_manifest(whole).data["pruned_model"]["num_hidden_layers"],
                               "whole": run_child([*epoch, "--artifact", str(whole)], args.threads),
                               "cached": run_child([*epoch, "--artifact", str(cached)], args.threads)})
        if "label" not in skip:
            loss_positions = run_child(["--child", "loss-positions", "--models", model], args.threads)
            for arm in label_arms(model, args, skip, loss_positions):
                best = {}
                for _ in range(args.repeats):           # full, label, full, label, ...: drift hits both
                    for side in ("full", "label"):
                        measured = run_child(arm[side], args.threads)
                        if side not in best or measured[arm["time_key"]] < best[side][arm["time_key"]]:
                            best[side] = measured
                labels.append({"model": model, "program": arm["program"], "measured": arm["measured"],
                               "time_key": arm["time_key"], "loss_positions": loss_positions, **best})

    print()
    print(f"CPU: {cpu_model()}; {args.threads} thread(s) on every side")
    if steps:
        print()
        print(step_table(steps, args.threads, args.steps))
    if epochs:
        print()
        print(epoch_table(epochs, args.threads))
    if labels:
        print()
        print(label_table(labels, args.threads, args.repeats))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "cpu": cpu_model(), "steps": steps, "epochs": epochs,
                                         "labels": labels, "repeats": args.repeats}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
