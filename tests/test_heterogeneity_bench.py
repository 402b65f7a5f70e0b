"""bench/heterogeneity.py end to end, small: the tiny model, 3 devices, 2 rounds, one seed, four
arms (the baseline, FedSpine over both axes with its sparsity schedule, HetLoRA with
self-pruning devices, and the pruned-once baseline), through a real coordinator and the
ExecuTorch runtime. Checks what the issue asks the summary to carry, and that the pruned model
devices deploy (cut from the model tuned in round 1) was scored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_heterogeneity_bench_writes_the_summary_the_issue_asks_for(tmp_path):
    tier = {"lora_layers": 2, "loss_positions": None, "seq": 64, "kernels": "portable"}
    command = [sys.executable, str(REPO / "bench" / "heterogeneity.py"), "--model", "tiny", "--tier", json.dumps(tier),
               "--seeds", "0", "--devices", "3", "--rounds", "2", "--devices-per-round", "3", "--min-updates", "2",
               "--local-steps", "2", "--eval-every", "1", "--eval-examples", "40",
               "--arms", "uniform:fedavg,fedspine:fedavg,hetlora:hetlora,uniform@p0.5:fedavg",
               # FedSpine tunes the whole model in round 1, then every device trains a cut of it at 0.5
               "--configurator-options", json.dumps({"fedspine": {"prune_ratios": [0, 0.5], "ranks": [4, 8],
                                                                  "sparsity_schedule": [[2, 0.5]]}}),
               "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["arms"]) == {"uniform:fedavg", "fedspine:fedavg", "hetlora:hetlora", "uniform@p0.5:fedavg"}
    for label, arm in summary["arms"].items():
        for key in ("time_to_target_s", "speedup_vs_uniform", "final_accuracy", "ci95", "upload_bytes",
                    "download_bytes"):
            assert key in arm, (label, key)
        [seed] = arm["per_seed"]
        assert 0.0 <= seed["final_accuracy"] <= 1.0 and len(seed["final_ci95"]) == 2
        assert seed["upload_bytes_total"] > 0 and seed["tiers_by_profile"]
    assert summary["arms"]["uniform:fedavg"]["speedup_vs_uniform"] == 1.0
    # The model FedSpine's devices deploy at 0.5 was scored: cut from the model tuned in round 1.
    deployed = summary["arms"]["fedspine:fedavg"]["per_seed"][0]["deployed"]
    assert len(deployed) == 1 and next(iter(deployed)) in {"p0.5-r4 cut@1", "p0.5-r8 cut@1"}, deployed
    assert summary["arms"]["fedspine:fedavg"]["per_seed"][0]["tiers_by_profile"]
    for score in deployed.values():
        assert 0.0 <= score["accuracy"] <= 1.0 and len(score["ci95"]) == 2 and score["num_examples"] == 40
    assert summary["arms"]["fedspine:fedavg"]["deployed"]
    # FedSpine's comparison: its deployed p0.5 model against the base pruned once at p0.5 with a fixed rank.
    [pair] = summary["deployed_vs_pruned_once"]["fedspine:fedavg vs uniform@p0.5:fedavg"]["per_seed"]
    assert pair["deployed"] in deployed and pair["difference"] == pair["accuracy"] - pair["pruned_once"]
    # HetLoRA's devices were handed ranks by capability (the arm labels are r<rank>).
    hetlora_tiers = summary["arms"]["hetlora:hetlora"]["per_seed"][0]["tiers_by_profile"]
    assert all(label.startswith("r") for per_profile in hetlora_tiers.values() for label in per_profile)
    assert "whole comparison" in done.stdout and (tmp_path / "out" / "accuracy_by_virtual_time.png").is_file()
