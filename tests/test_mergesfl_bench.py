"""bench/mergesfl.py end to end, small: the tiny model, 3 devices, one seed, one alpha, the three
arms (FedAvg-LoRA, MergeSFL, plain split learning) through a real coordinator and the ExecuTorch
runtime, with the device-memory measurement. Checks what the issue asks the summary to carry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_mergesfl_bench_writes_the_summary_the_issue_asks_for(tmp_path):
    tier = {"lora_layers": 2, "loss_positions": None, "seq": 64, "kernels": "portable"}
    command = [sys.executable, str(REPO / "bench" / "mergesfl.py"), "--model", "tiny", "--tier", json.dumps(tier),
               "--seeds", "0", "--devices", "3", "--rounds", "2", "--devices-per-round", "3", "--min-updates", "2",
               "--local-steps", "2", "--eval-every", "1", "--eval-examples", "40", "--alphas", "0.5",
               "--batch-sizes", "1,2", "--target-batch", "3", "--average-every", "2", "--checkpoints", "2",
               "--examples-per-device", "8", "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    arms = summary["alphas"]["0.5"]
    assert set(arms) == {"fedavg", "mergesfl", "plain"}
    for label, arm in arms.items():
        for key in ("final_accuracy", "ci95", "time_to_target_s", "device_peak_rss_mib", "bytes_per_device_round"):
            assert key in arm, (label, key)
        [seed] = arm["per_seed"]
        assert 0.0 <= seed["final_accuracy"] <= 1.0 and len(seed["final_ci95"]) == 2
        assert arm["device_peak_rss_mib"] > 0 and arm["bytes_per_device_round"] > 0
        assert arm["device_gflop_mean"] > 0         # counted device compute, FedAvg and split alike
    # Equal time: each split arm ran to FedAvg-LoRA's time on the steady clock (its last step may pass it).
    budget = arms["fedavg"]["per_seed"][0]["clock_s"]
    for label in ("mergesfl", "plain"):
        seed = arms[label]["per_seed"][0]
        assert seed["clock_s"] >= budget and seed["steps"] >= 1 and seed["idle_seconds_per_step"] is not None
        assert seed["fedavg_accuracy_at_same_time"] is not None
    assert "whole comparison" in done.stdout and (tmp_path / "out" / "accuracy_by_virtual_time.png").is_file()

    # --from-results: the same runs summarized again give the same arms; other settings are refused.
    again = subprocess.run([sys.executable, str(REPO / "bench" / "mergesfl.py"), "--from-results",
                            str(tmp_path / "out" / "results.json"), "--out", str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    resummarized = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert resummarized["alphas"]["0.5"]["mergesfl"]["final_accuracy"] == arms["mergesfl"]["final_accuracy"]
    other = json.loads((tmp_path / "out" / "results.json").read_text())
    other["settings"]["target_batch"] += 1
    for run in other["runs"]:
        run["seed"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = subprocess.run([sys.executable, str(REPO / "bench" / "mergesfl.py"), "--from-results",
                              str(tmp_path / "out" / "results.json"), str(tmp_path / "other.json"),
                              "--out", str(tmp_path / "mixed")], capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "target_batch" in refused.stderr
