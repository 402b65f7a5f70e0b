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
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def export(args, out: Path) -> Path:
    command = [sys.executable, "-m", "pockettune", "export", "--model", args.model, "--lora-rank", str(args.lora_rank),
               "--lora-layers", str(args.lora_layers), "--quantize", args.quantize, "--batch", str(args.batch),
               "--seq", str(args.seq), "--prune", str(args.prune), "--kernels", args.kernels, "--out", str(out),
               "--no-progress"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def _summarize(frame, steps: int) -> tuple[list[tuple[str, float, int]], float]:
    """(operator, ms per step, calls per step) from an Inspector frame, and the step's total ms.

    Each frame row is one event of the program; ``raw`` holds its durations over the runs. The
    first run (loading, weight packing, first touch of the arena) is left out.

    Portable kernels appear as ``native_call_<op>``; XNNPACK reports each operator it runs
    inside a delegate (``Fully Connected (NC, F32) GEMM #12``), grouped here by kind. What a
    ``DELEGATE_CALL`` takes beyond its operators (copying inputs in and outputs out, setup) is
    its own row.
    """
    executed = frame[frame["event_block_name"] == "Execute"].copy()
    executed["raw"] = executed["raw"].apply(lambda raw: list(raw)[1:])
    step_ms = float(executed[executed["event_name"] == "Method::execute"]["raw"].apply(sum).sum()) / steps

    def rows(events, name_of):
        grouped: dict[str, list[float]] = {}
        for name, raw in zip(events["event_name"], events["raw"]):
            grouped.setdefault(name_of(name), []).extend(raw)
        return {name: (sum(times) / steps, len(times) // steps) for name, times in grouped.items()}

    portable = rows(executed[executed["event_name"].str.startswith("native_call_")],
                    lambda name: name.removeprefix("native_call_"))
    delegated = rows(executed[executed["is_delegated_op"].fillna(False).astype(bool)],
                     lambda name: "xnnpack: " + re.sub(r" #\d+$", "", name))
    calls = executed[executed["event_name"] == "DELEGATE_CALL"]
    summary = [(name, ms, count) for name, (ms, count) in {**portable, **delegated}.items()]
    if len(calls):
        call_ms = float(calls["raw"].apply(sum).sum()) / steps
        inside_ms = sum(ms for ms, _ in delegated.values())
        summary.append(("xnnpack: delegate call overhead", max(0.0, call_ms - inside_ms),
                        int(calls["raw"].apply(len).sum()) // steps))
    return sorted(summary, key=lambda row: -row[1]), step_ms


def profile(artifact: Path, steps: int, etdump_path: Path, threads: int) -> tuple[list[tuple[str, float, int]], float]:
    """Run ``steps`` training steps with ETDump on; the per-operator summary and the step's ms."""
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch, _threadpool_get_thread_count
    from executorch.extension.training import TrainingModule

    from export.manifest import program_batch_shape, read_manifest
    from fleet.runtime_executorch import set_runtime_threads

    set_runtime_threads(threads)
    manifest = read_manifest(artifact)
    if manifest.data.get("prefix"):
        raise SystemExit("profile_step.py profiles whole training programs; this artifact trains on cached "
                         "prefix outputs (export it without --prefix-cache)")
    batch, seq = program_batch_shape(manifest.data)
    module = _load_for_executorch(str(artifact / "model.pte"), data_path=str(artifact / "lora.ptd"),
                                  enable_etdump=True)
    trainer = TrainingModule(module)
    vocab = manifest.data["base_model"]["vocab_size"]
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    for _ in range(steps + 1):                                  # the first run is left out of the summary
        trainer.forward_backward("forward", (ids, ids.clone()))
    module.write_etdump_result_to_file(str(etdump_path))
    print(f"runtime threadpool: {_threadpool_get_thread_count()} threads")
    return _summarize(Inspector(etdump_path=str(etdump_path)).to_dataframe(), steps)


def _is_matmul(name: str) -> bool:
    return (name.split(".")[0] in ("mm", "bmm", "linear", "addmm")
            or name.startswith(("xnnpack: Fully Connected", "xnnpack: Batch Matrix Multiply")))


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
    parser.add_argument("--kernels", choices=("xnnpack", "portable"), default="xnnpack")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="runtime threadpool size (default 1)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    from models.console import quiet_library_chatter

    quiet_library_chatter()
    from export.manifest import read_manifest
    from fleet.hardware import measure_matmul_gflops, training_flops

    with tempfile.TemporaryDirectory(prefix="pockettune-profile-") as tmp:
        artifact = args.artifact or export(args, Path(tmp) / "artifact")
        rows, step_ms = profile(artifact, args.steps, Path(tmp) / "step.etdp", args.threads)
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
    matmul_ms = sum(ms for name, ms, _ in rows if _is_matmul(name))
    print(f"\nanalytical training work: {step_gflop:.1f} GFLOP per step (fleet/hardware.py)")
    print(f"torch fp32 matmul, 1 thread, this run: {peak:.1f} GFLOP/s")
    print(f"matrix multiplies (portable mm/bmm/linear, XNNPACK fully connected and batch matmul): "
          f"{matmul_ms:.1f} ms/step, {matmul_ms / step_ms:.1%} of the step")
    if matmul_ms > 0:
        # An upper bound on the matmuls' throughput: element-wise work is counted as if it were theirs.
        rate = step_gflop / (matmul_ms / 1e3)
        print(f"matmuls at most {rate:.1f} GFLOP/s (all step FLOPs / matmul time), {rate / peak:.1%} of torch's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
