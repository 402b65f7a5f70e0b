"""bench/compression.py end to end, small: the tiny model, 3 devices, 2 rounds, one seed, fp32
against int8 and top-k, through a real coordinator and the ExecuTorch runtime. Checks what the
summary carries and that the compressed arms sent fewer bytes on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_compression_bench_compares_encodings_by_accuracy_and_bytes_on_the_wire(tmp_path):
    tier = {"lora_layers": 2, "loss_positions": None, "seq": 64, "kernels": "portable"}
    command = [sys.executable, str(REPO / "bench" / "compression.py"), "--model", "tiny", "--tier", json.dumps(tier),
               "--seeds", "0", "--devices", "3", "--rounds", "2", "--devices-per-round", "3", "--min-updates", "2",
               "--local-steps", "2", "--eval-every", "1", "--eval-examples", "40", "--arms", "int8,fp32,topk:0.25",
               "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["arms"]) == ["fp32", "int8", "topk:0.25"]       # the baseline first
    for label, arm in summary["arms"].items():
        for key in ("final_accuracy", "ci95", "difference_vs_fp32", "upload_bytes_per_device_round",
                    "upload_ratio_vs_fp32"):
            assert key in arm, (label, key)
        assert 0.0 <= arm["final_accuracy"] <= 1.0 and arm["upload_bytes_per_device_round"] > 0
    assert summary["arms"]["fp32"]["upload_ratio_vs_fp32"] == 1.0
    assert summary["arms"]["int8"]["upload_ratio_vs_fp32"] < 0.6
    assert summary["arms"]["topk:0.25"]["upload_ratio_vs_fp32"] < 0.8
    assert "whole comparison" in done.stdout and (tmp_path / "out" / "accuracy_by_upload_bytes.png").is_file()
