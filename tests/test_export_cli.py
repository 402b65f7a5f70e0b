"""``pockettune export`` refuses bad input with one line and exit status 2, writing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pockettune.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bad_args, message", [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "tiny", "--prune", "0.95"], "pruning ratio must be in [0, 0.9]"),
    (["--model", "tiny", "--prune", "-0.1"], "pruning ratio must be in [0, 0.9]"),
    (["--model", "tiny", "--lora-rank", "0"], "LoRA rank must be an integer in [1, 4096]"),
    (["--model", "tiny", "--lora-layers", "5"], "only 4 layers"),
    (["--model", "tiny", "--rank-pattern", "4,x"], "rank pattern"),
    (["--model", "tiny", "--lora-layers", "2", "--rank-pattern", "4,4,4"], "lists 3 ranks for 2"),
    (["--model", "tiny", "--quantize", "int4"], "invalid choice"),
    (["--model", "tiny", "--prune", "half"], "invalid float value"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(bad_args, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        code = main(["export", *bad_args, "--out", str(out), "--no-progress"])
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("pockettune export: error:")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["export", "--model", "tiny", "--out", str(blocker / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a directory" in err[0]


def test_console_script_exports_and_verifies(tmp_path):
    """The real command line, in its own process: export + --verify prints the comparison JSON."""
    out = tmp_path / "artifact"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pockettune", "export", "--model", "tiny", "--lora-layers", "1",
         "--lora-rank", "2", "--batch", "2", "--seq", "16", "--kernels", "portable", "--out", str(out),
         "--verify", "3"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert len(report["eager_loss"]) == len(report["runtime_loss"]) == 3
    assert report["max_abs_lora_diff"] <= 1e-5
    assert (out / "manifest.json").is_file() and (out / "model.pte").is_file()
    assert "export" in proc.stderr  # the progress display


def test_help_lists_every_option():
    proc = subprocess.run([sys.executable, "-m", "pockettune", "export", "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0
    for option in ("--model", "--prune", "--lora-rank", "--rank-pattern", "--lora-layers", "--quantize",
                   "--batch", "--seq", "--out", "--verify"):
        assert option in proc.stdout
