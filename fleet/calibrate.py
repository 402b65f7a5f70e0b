"""Calibrate the virtual clock's sustained FLOP rates, once, on the reference machine.

The simulator never times a device's compute on the host (the host's load would leak into
virtual time, see ``fleet/virtual_clock.py``); it divides counted FLOPs by a constant rate per
program kind. This script measures those constants: for each kind it exports the calibration
tier (cached under ``artifacts/calibration/``), trains a few steps of it through the runtime a
device uses, in a fresh process on one thread (what each of the simulator's two workers gets
on a 2-core machine), and divides the analytical FLOPs of a step (``fleet/hardware.py``) by
the median step time. It also measures the fp32 matmul peak the reference device reports.

Run it on an otherwise idle machine; its output goes into ``REFERENCE_SUSTAINED_GFLOPS`` and
``REFERENCE_PEAK_GFLOPS`` (``fleet/virtual_clock.py``) and ``docs/fleet.md``:

    .venv/bin/python -m fleet.calibrate --json docs/fleet/calibration.json
    .venv/bin/python -m fleet.calibrate --kinds executorch-portable-int8 --steps 3   # one kind
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The demo's tier (SmolLM2-135M, LoRA r8 on q/v of the last 4 layers, B4 S64), plain SGD so
#: that ONNX Runtime can compile it too: a real model's shapes, not the tiny model's, whose
#: steps take milliseconds and measure per-op overhead rather than throughput.
CALIBRATION_MODEL = "smollm2-135m"
CALIBRATION_TIER = {"lora_rank": 8, "lora_layers": 4, "batch": 4, "seq": 64}


def kind_export_options(kind: str) -> list[str]:
    """``pockettune export`` options that build a program of ``kind`` (the format that compiles it
    says which tier fields select it)."""
    from export.formats import FORMATS, get_format
    from fleet.virtual_clock import PROGRAM_KINDS

    if kind not in PROGRAM_KINDS:
        raise ValueError(f"unknown program kind {kind!r}; use one of {', '.join(PROGRAM_KINDS)}")
    for name in FORMATS:
        fields = get_format(name).program_kinds().get(kind)
        if fields is not None:
            return ["--format", name, *(part for field, value in fields.items() for part in (f"--{field}", value))]
    raise ValueError(f"no artifact format compiles program kind {kind!r}")


def ensure_artifact(kind: str, workdir: Path, model: str) -> Path:
    from export.manifest import MANIFEST_FILE

    out = workdir / f"{model}-{kind}"
    if not (out / MANIFEST_FILE).is_file():
        print(f"[calibrate] exporting {out.name}", file=sys.stderr, flush=True)
        t = CALIBRATION_TIER
        command = [sys.executable, "-m", "pockettune", "export", "--model", model, "--lora-rank", str(t["lora_rank"]),
                   "--lora-layers", str(t["lora_layers"]), "--batch", str(t["batch"]), "--seq", str(t["seq"]),
                   *kind_export_options(kind), "--out", str(out), "--force", "--no-progress"]
        started = time.monotonic()
        subprocess.run(command, check=True, cwd=REPO)
        print(f"[calibrate] exported {out.name} in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return out


# --- child processes ---------------------------------------------------------------------------

def _trainer(artifact: Path, threads: int):
    """The artifact's runtime on ``threads`` threads, from the artifact's own initial adapter."""
    from export.formats import get_format
    from export.manifest import read_manifest
    from fleet.runtimes import get_runtime

    manifest = read_manifest(artifact).data
    runtime = get_runtime(manifest["format"])
    runtime.set_threads(threads)
    start = artifact / get_format(manifest["format"]).initial_start_adapter(manifest)
    return runtime.trainer(artifact, manifest, start, {"lr": 0.01}, threads=threads), manifest


def measure_kind(artifact: Path, steps: int, threads: int) -> dict:
    """Median step time of ``artifact`` over ``steps`` steps after one warm-up step.

    Token ids are random: a step's work does not depend on their values (no sparsity, no early
    exit), so no corpus is needed.
    """
    import torch

    from export.manifest import program_batch_shape
    from fleet.hardware import training_flops
    from fleet.virtual_clock import program_kind

    torch.set_num_threads(threads)
    trainer, manifest = _trainer(artifact, threads)
    batch, seq = program_batch_shape(manifest)
    generator = torch.Generator().manual_seed(0)
    vocab = manifest["base_model"]["vocab_size"]
    batches = [torch.randint(0, vocab, (batch, seq), generator=generator, dtype=torch.int64) for _ in range(3)]
    times = []
    for i in range(steps + 1):
        ids = batches[i % len(batches)]
        started = time.perf_counter()
        trainer.step(ids, ids.clone())
        times.append(time.perf_counter() - started)
    flops = training_flops(manifest).total
    median = statistics.median(times[1:])
    return {"kind": program_kind(manifest), "threads": threads, "steps": steps, "step_seconds": times[1:],
            "median_step_s": median, "flops_per_step": flops, "sustained_gflops": flops / median / 1e9}


def measure_peak(threads: int, repeats: int = 5) -> dict:
    from fleet.hardware import measure_matmul_gflops

    runs = [measure_matmul_gflops(threads=threads) for _ in range(repeats)]
    return {"threads": threads, "runs_gflops": runs, "peak_gflops": statistics.median(runs)}


def _child(args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "fleet.calibrate", *args, "--threads", str(threads)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"calibration child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    from fleet.virtual_clock import PROGRAM_KINDS

    parser = argparse.ArgumentParser(prog="python -m fleet.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="all", help=f"comma list of program kinds (default all: {', '.join(PROGRAM_KINDS)})")
    parser.add_argument("--model", default=CALIBRATION_MODEL)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per kind after one warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1: one worker's share)")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "calibration")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=("step", "peak"), help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "step":
        print(json.dumps(measure_kind(args.artifact, args.steps, args.threads)))
        return 0
    if args.child == "peak":
        print(json.dumps(measure_peak(args.threads)))
        return 0

    kinds = list(PROGRAM_KINDS) if args.kinds == "all" else [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        kind_export_options(kind)          # unknown kinds fail before any export
    artifacts = {kind: ensure_artifact(kind, args.workdir, args.model) for kind in kinds}
    # Measured only after every export: an export is the heaviest thing this machine does.
    peak = _child(["--child", "peak"], args.threads)
    results = {kind: _child(["--child", "step", "--artifact", str(path), "--steps", str(args.steps)], args.threads)
               for kind, path in artifacts.items()}
    report = {"date": time.strftime("%Y-%m-%d"), "cpu": _cpu_model(), "cpus": os.cpu_count(),
              "model": args.model, "tier": CALIBRATION_TIER, "threads": args.threads, "peak": peak, "kinds": results}
    print(f"cpu: {report['cpu']} ({report['cpus']} cpus), {args.threads} thread(s), {args.model} {CALIBRATION_TIER}")
    print(f"fp32 matmul peak (256^3, median of 5): {peak['peak_gflops']:.1f} GFLOP/s")
    print(f"{'kind':<26} {'GFLOP/step':>10} {'median s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for kind, r in results.items():
        print(f"{kind:<26} {r['flops_per_step'] / 1e9:>10.2f} {r['median_step_s']:>9.3f} "
              f"{r['sustained_gflops']:>8.2f} {r['sustained_gflops'] / peak['peak_gflops']:>8.1%}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
