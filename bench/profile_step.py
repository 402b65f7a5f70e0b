"""Where an ExecuTorch training step spends its time: an ETDump profile, summarized by operator.

Runs ``--steps`` training steps of an artifact's program through the runtime with ETDump
enabled (every kernel call is timed by the runtime itself), then prints a table of the
operators by total time per step and their share of the step, as markdown. Exports the
artifact first (in a child process) unless ``--artifact DIR`` names an existing one.

    python bench/profile_step.py --model tiny
    python bench/profile_step.py --model smollm2-135m --lora-layers 8 --seq 128     # issue 5's reference tier
    python bench/profile_step.py --artifact runs/demo/coordinator/artifacts/<key>
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def export(args, out: Path) -> Path:
    command = [sys.executable, "-m", "pockettune", "export", "--model", args.model, "--lora-rank", str(args.lora_rank),
               "--lora-layers", str(args.lora_layers), "--quantize", args.quantize, "--batch", str(args.batch),
               "--seq", str(args.seq), "--prune", str(args.prune), "--out", str(out), "--no-progress"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def profile(artifact: Path, steps: int, etdump_path: Path) -> tuple[list[tuple[str, float, int]], float]:
    """(operator, ms per step, calls per step) sorted by time, and the step's total ms."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch
    from executorch.extension.training import TrainingModule

    from export.manifest import read_manifest

    manifest = read_manifest(artifact)
    batch, seq = manifest.inputs[0]["shape"]
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    module = _load_for_executorch(str(artifact / "model.pte"), data_path=str(artifact / "lora.ptd"),
                                  enable_etdump=True)
    trainer = TrainingModule(module)
    vocab = manifest.data["base_model"]["vocab_size"]
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        trainer.forward_backward("forward", (ids, ids.clone()))
    module.write_etdump_result_to_file(str(etdump_path))
    frame = Inspector(etdump_path=str(etdump_path)).to_dataframe()
    calls = frame[(frame["event_block_name"] == "Execute") & frame["event_name"].str.startswith("native_call_")]
    executes = frame[(frame["event_block_name"] == "Execute") & (frame["event_name"] == "Method::execute")]
    step_ms = float(executes["raw"].apply(sum).sum()) / steps
    summary = []
    for name, group in calls.groupby("event_name"):
        total = float(group["raw"].apply(sum).sum()) / steps
        count = int(group["raw"].apply(len).sum()) // steps
        summary.append((name.removeprefix("native_call_"), total, count))
    print(f"runtime threadpool: {_threadpool_get_thread_count()} threads")
    return sorted(summary, key=lambda row: -row[1]), step_ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=None, help="profile this artifact directory (no export)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-layers", type=int, default=2)
    parser.add_argument("--quantize", choices=("none", "int8"), default="none")
    parser.add_argument("--prune", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    from pockettune.cli import quiet_library_chatter

    quiet_library_chatter()
    from export.manifest import read_manifest
    from fleet.hardware import measure_matmul_gflops, training_flops

    with tempfile.TemporaryDirectory(prefix="pockettune-profile-") as tmp:
        artifact = args.artifact or export(args, Path(tmp) / "artifact")
        rows, step_ms = profile(artifact, args.steps, Path(tmp) / "step.etdp")
        step_gflop = training_flops(read_manifest(artifact).data).total / 1e9
    # The baseline, measured in this run: torch's fp32 matmul on one thread of this machine.
    peak = measure_matmul_gflops()
    print(f"artifact: {args.artifact or f'{args.model} r{args.lora_rank} last-{args.lora_layers} {args.quantize} B{args.batch} S{args.seq}'}")
    print(f"step: {step_ms:.1f} ms (ETDump, mean of {args.steps} steps)\n")
    print("| operator | ms / step | share | calls / step |\n|---|---|---|---|")
    for name, ms, count in rows[: args.top]:
        print(f"| `{name}` | {ms:.1f} | {ms / step_ms:.1%} | {count} |")
    rest = sum(ms for _, ms, _ in rows[args.top:])
    print(f"| (other {max(0, len(rows) - args.top)} operators) | {rest:.1f} | {rest / step_ms:.1%} | |")
    mm_ms = sum(ms for name, ms, _ in rows if name.startswith("mm"))
    print(f"\nanalytical training work: {step_gflop:.1f} GFLOP per step (fleet/hardware.py)")
    print(f"torch fp32 matmul, 1 thread, this run: {peak:.1f} GFLOP/s")
    if mm_ms > 0:
        # An upper bound on mm's own throughput: bmm (attention) does a little of that work.
        print(f"mm at most {step_gflop / (mm_ms / 1e3):.1f} GFLOP/s (all step FLOPs / mm time), "
              f"{step_gflop / (mm_ms / 1e3) / peak:.1%} of torch's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
