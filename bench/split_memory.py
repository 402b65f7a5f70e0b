"""A split-learning device's peak memory against a FedAvg-LoRA device's, on the same model, in one run.

A split device (MergeSFL) runs only the bottom of the model: the embeddings and the layers
below the cut, with their LoRA (``bottom.pte``: its features and training methods,
``export/split_programs.py``), driven by ``fleet/split_bottom.py``. A FedAvg-LoRA device runs
the whole model's training program: the tier every federated bench trains
(``bench/federated_accuracy.py``'s ``EXPERIMENT_TIER``: LoRA r8 on q/v of the last 4 layers,
frozen-prefix caching, the label-position head), driven by ``fleet/runtime_executorch.py``.
Each measurement runs a few real training steps on BBC News batches in a fresh child process,
so each peak RSS is that process's own (the exports run in children too: Linux carries a
parent's peak into its children). Printed: each device's peak RSS (MiB) and its ratio to the
FedAvg device's, raw and above a child that only imports the runtime and loads the batches
(the Python interpreter and torch are the simulator's cost, not a phone's), with the CPU model.

    python bench/split_memory.py                                   # SmolLM2-135M, cuts 2 and 4
    python bench/split_memory.py --model tiny --split-layers 1,2   # seconds, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from train_step import peak_rss_mib  # noqa: E402  (the peak-RSS reading every memory bench shares)


def batches(work: Path, batch: int, seq: int, count: int):
    """BBC News batches tokenized with the FedAvg artifact's own tokenizer, as a device does (loading
    the base model for its tokenizer would put the whole eager model in every child's peak)."""
    from transformers import AutoTokenizer

    from export.manifest import read_manifest
    from models.tasks import get_task

    artifact = Path(work) / "fedavg"
    tokenizer = AutoTokenizer.from_pretrained(artifact / read_manifest(artifact).data["tokenizer"]["dir"])
    task = get_task("bbcnews")
    return task.batches(tokenizer, task.examples("train")[: batch * count], batch, seq)


# --- children ---------------------------------------------------------------------------------------

def export_child(args) -> dict:
    """Export the FedAvg artifact and the split programs of every cut into ``args.work``."""
    from federated_accuracy import EXPERIMENT_TIER

    from export.pipeline import export_artifact
    from export.split_programs import export_split_programs
    from models.lora import apply_lora, resolve_layout
    from models.registry import load_base_model
    from models.tier import Tier

    work = Path(args.work)
    reference = {**EXPERIMENT_TIER, "batch": args.batch, "seq": args.seq}
    if args.model == "tiny":
        reference.update(lora_layers=2, loss_positions=None)   # byte tokens: a topic word is many labels
    tier = Tier.from_dict(reference)
    fedavg_dir = work / "fedavg"
    if not (fedavg_dir / "manifest.json").is_file():
        export_artifact(args.model, tier, fedavg_dir, replace=True)
    reports = {}
    for cut in args.split_layers:
        out = work / f"split-{cut}"
        if (out / "report.json").is_file():
            reports[cut] = json.loads((out / "report.json").read_text())
            continue
        base = load_base_model(args.model)
        depth = base.config.num_hidden_layers
        peft = apply_lora(base.model, resolve_layout(depth, tier.lora_rank, depth))
        report = export_split_programs(peft, cut, args.batch, args.seq, out)
        (out / "report.json").write_text(json.dumps(report))
        reports[cut] = report
    return {"fedavg": str(fedavg_dir), "split": {str(c): str(work / f"split-{c}") for c in args.split_layers}}


def fedavg_child(args) -> dict:
    """A few steps of the FedAvg device's training program; its peak RSS."""
    from export.manifest import read_manifest
    from fleet.runtime_executorch import ExecuTorchTrainer

    artifact = Path(args.work) / "fedavg"
    manifest = read_manifest(artifact).data
    data = batches(args.work, args.batch, args.seq, args.steps)
    trainer = ExecuTorchTrainer.for_artifact(artifact, manifest, artifact / manifest["program"]["trainable_data_file"],
                                             lr=1e-3, optimizer="adamw", cache_dir=Path(args.work) / "prefix-cache")
    trainer.prepare(data)
    started = time.perf_counter()
    losses = [trainer.step(ids, labels) for ids, labels in data]
    return {"peak_rss_mib": peak_rss_mib(), "step_seconds": (time.perf_counter() - started) / len(data),
            "losses": losses}


def split_child(args, cut: int) -> dict:
    """A few steps of a split device's bottom (features, then a gradient backpropagated); its peak RSS.
    The gradient is random: the server's top is not on the device and its memory is not the device's."""
    import torch

    from fleet.split_bottom import SplitBottomTrainer

    out = Path(args.work) / f"split-{cut}"
    report = json.loads((out / "report.json").read_text())
    data = batches(args.work, args.batch, args.seq, args.steps)
    trainer = SplitBottomTrainer(out, report["lora_inputs"], lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for ids, _ in data:
        features = trainer.features(ids)
        trainer.backward(ids, torch.randn(features.shape, generator=generator) * 1e-3)
    return {"peak_rss_mib": peak_rss_mib(), "step_seconds": (time.perf_counter() - started) / len(data),
            "features_shape": list(features.shape)}


def baseline_child(args) -> dict:
    """The interpreter with the same imports and batches and no program: what every Python-driven
    device pays before a runtime loads anything (a phone's app pays its own instead)."""
    import torch  # noqa: F401
    from executorch.extension.pybindings import portable_lib  # noqa: F401
    from executorch.extension.training import TrainingModule  # noqa: F401

    batches(args.work, args.batch, args.seq, args.steps)
    return {"peak_rss_mib": peak_rss_mib(), "step_seconds": 0.0}


def in_child(args, role: str) -> dict:
    command = [sys.executable, __file__, "--child", role, "--model", args.model, "--work", str(args.work),
               "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps),
               "--split-layers", ",".join(map(str, args.split_layers))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"{role} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model of models/registry.py (default %(default)s)")
    parser.add_argument("--split-layers", default="2,4", help="cuts to measure, comma-separated (default %(default)s)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement")
    parser.add_argument("--work", type=Path, default=Path("runs") / "split_memory",
                        help="exported programs (kept: a second run measures without exporting)")
    parser.add_argument("--json", type=Path, help="write the measurements here too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.split_layers = [int(s) for s in args.split_layers.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--split-layers must be integers separated by commas, got {args.split_layers!r}")
    if not args.split_layers or args.batch < 1 or args.seq < 2 or args.steps < 1:
        parser.error("need at least one cut, a batch >= 1, seq >= 2 and steps >= 1")
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    if args.child:
        role = args.child
        result = (export_child(args) if role == "export" else fedavg_child(args) if role == "fedavg"
                  else baseline_child(args) if role == "baseline" else split_child(args, int(role.partition("-")[2])))
        print(json.dumps(result))
        return 0
    from federated_accuracy import cpu_model

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()}; {args.model}, batch {args.batch}, seq {args.seq}, {args.steps} steps each", flush=True)
    in_child(args, "export")
    baseline = in_child(args, "baseline")
    fedavg = in_child(args, "fedavg")
    rows = {"fedavg-lora (whole model, prefix-cached top)": fedavg}
    for cut in args.split_layers:
        rows[f"split, layers below {cut}"] = in_child(args, f"split-{cut}")
    above = {name: row["peak_rss_mib"] - baseline["peak_rss_mib"] for name, row in rows.items()}
    reference = above["fedavg-lora (whole model, prefix-cached top)"]
    print(f"interpreter, imports and batches alone: {baseline['peak_rss_mib']:.0f} MiB (subtracted in the last columns)")
    print("| device | peak RSS (MiB) | vs FedAvg-LoRA | above the interpreter (MiB) | vs FedAvg-LoRA | s/step |\n"
          "|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['peak_rss_mib']:.0f} | {row['peak_rss_mib'] / fedavg['peak_rss_mib']:.2f} "
              f"| {above[name]:.0f} | {above[name] / reference:.2f} | {row['step_seconds']:.2f} |")
    rows["baseline (interpreter, imports, batches)"] = baseline
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "settings": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
