"""bench/privacy.py end to end, small: the tiny model, 3 devices, 2 rounds, one seed, no privacy
against central DP at epsilon 8, through a real coordinator and the ExecuTorch runtime. Checks
the calibration (the epsilon the coordinator reports is within the target) and the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_privacy_bench_reports_accuracy_at_the_epsilon_it_asked_for(tmp_path):
    tier = {"lora_layers": 2, "loss_positions": None, "seq": 64, "kernels": "portable"}
    command = [sys.executable, str(REPO / "bench" / "privacy.py"), "--model", "tiny", "--tier", json.dumps(tier),
               "--seeds", "0", "--devices", "3", "--rounds", "2", "--devices-per-round", "3", "--min-updates", "2",
               "--local-steps", "2", "--eval-every", "1", "--eval-examples", "40", "--arms", "central:8,none",
               "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["arms"]) == ["none", "central:8"]
    dp = summary["arms"]["central:8"]
    assert 7.5 < dp["epsilon"] <= 8.0 and dp["noise_multiplier"] > 0 and dp["clip_norms"][0] > 0
    assert summary["arms"]["none"]["epsilon"] is None
    for arm in summary["arms"].values():
        assert 0.0 <= arm["final_accuracy"] <= 1.0
    assert "whole comparison" in done.stdout and (tmp_path / "out" / "accuracy_by_epsilon.png").is_file()
