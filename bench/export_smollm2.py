"""Export SmolLM2-135M at several tiers and record artifact sizes, export cost and agreement.

Each export runs as its own ``pockettune export ... --verify N`` process (so its peak RSS is
its own) and the table below is printed in Markdown for docs/exporter.md.

    python bench/export_smollm2.py                          # prune 0 fp32, prune 0 int8, prune 0.5 int8
    python bench/export_smollm2.py --configs 0.5:int8 --verify 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_measured(cmd: list[str]) -> tuple[str, str, int, int]:
    """Run ``cmd``; return stdout, stderr, exit status and that child's own peak RSS in KiB.

    ``os.wait4`` gives the rusage of exactly this child (RUSAGE_CHILDREN would be the largest
    of all children so far).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return out.read(), err.read(), child.returncode, usage.ru_maxrss


def run_export(prune: float, quantize: str, args) -> dict:
    out = args.workdir / f"smollm2-135m-p{int(prune * 100)}-{quantize}"
    cmd = [sys.executable, "-m", "pockettune", "export", "--model", "smollm2-135m", "--prune", str(prune),
           "--lora-layers", str(args.lora_layers), "--lora-rank", str(args.lora_rank), "--quantize", quantize,
           "--batch", "4", "--seq", "128", "--out", str(out), "--force", "--verify", str(args.verify),
           "--no-progress"]
    start = time.perf_counter()
    stdout, stderr, returncode, peak_kib = run_measured(cmd)
    wall = time.perf_counter() - start
    if returncode != 0:
        raise RuntimeError(f"export failed ({' '.join(cmd)}):\n{stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    verify = json.loads(stdout)
    files = manifest["files"]
    return {
        "prune": prune, "quantize": quantize, "command": " ".join(cmd[1:]),
        "pte_mib": files["model.pte"]["size"] / 2**20,
        "ptd_kib": files["lora.ptd"]["size"] / 2**10,
        "device_mib": sum(f["size"] for f in files.values() if f["device"]) / 2**20,
        "pruned": manifest["pruned_model"],
        "trainable": manifest["lora"]["trainable_parameters"],
        "export_s": manifest["export"]["total_seconds"],
        "stage_s": manifest["export"]["stage_seconds"],
        "wall_s": wall,
        "peak_rss_mib": peak_kib / 1024,
        "verify": verify,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="0:none,0:int8,0.5:int8",
                        help="comma list of PRUNE:QUANTIZE (default 0:none,0:int8,0.5:int8)")
    parser.add_argument("--lora-layers", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--verify", type=int, default=5, help="verification steps (default 5)")
    parser.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "exports")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    results = []
    for spec in args.configs.split(","):
        prune, quantize = spec.split(":")
        print(f"[bench] exporting prune={prune} quantize={quantize}", file=sys.stderr, flush=True)
        results.append(run_export(float(prune), quantize, args))

    print(f"\nSmolLM2-135M, LoRA r{args.lora_rank} on q/v of the last {args.lora_layers} layers, B=4, seq 128")
    print("| prune | base | layers / heads / kv / MLP | .pte MiB | .ptd KiB | device MiB | LoRA params "
          "| export s | peak RSS MiB | verify steps | max abs LoRA diff | loss first -> last (runtime) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        p, v = r["pruned"], r["verify"]
        rss = f"{r['peak_rss_mib']:.0f}"
        print(f"| {r['prune']} | {r['quantize']} | {p['num_hidden_layers']} / {p['num_attention_heads']} / "
              f"{p['num_key_value_heads']} / {p['intermediate_size']} | {r['pte_mib']:.1f} | {r['ptd_kib']:.0f} "
              f"| {r['device_mib']:.1f} | {r['trainable']} | {r['export_s']:.0f} | {rss} | {v['steps']} "
              f"| {v['max_abs_lora_diff']:.2e} | {v['runtime_loss'][0]:.3f} -> {v['runtime_loss'][-1]:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
