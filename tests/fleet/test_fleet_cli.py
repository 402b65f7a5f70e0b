"""``pockettune device`` / ``simulate`` refuse bad input with one line and exit status 2."""

from __future__ import annotations

import pytest

from pockettune.cli import main


@pytest.mark.parametrize("argv, message", [
    (["device", "--coordinator", "http://127.0.0.1:9", "--task", "bbcnews", "--shard", "5/3"], "between 1 and N"),
    (["device", "--coordinator", "http://127.0.0.1:9", "--task", "imdb"], "unknown task 'imdb'"),
    (["device", "--coordinator", "http://127.0.0.1:9", "--data", "/nonexistent/notes.txt"], "no such file"),
    (["device", "--coordinator", "http://127.0.0.1:9", "--task", "bbcnews", "--partition", "zipf"], "unknown partition"),
    (["simulate", "--dropout", "1.5"], "--dropout"),
    (["simulate", "--devices", "0"], ">= 1"),
    (["simulate", "--lora-layers", "0"], "LoRA layers"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, tmp_path):
    assert main(argv + (["--state-dir", str(tmp_path)] if argv[0] == "device" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_device_without_enrollment_key_says_what_to_do(capsys, tmp_path):
    argv = ["device", "--coordinator", "http://127.0.0.1:9", "--task", "bbcnews", "--state-dir", str(tmp_path)]
    assert main(argv) == 2
    assert "--enroll" in capsys.readouterr().err


def test_every_fleet_command_has_help(capsys):
    for command in ("device", "simulate", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: pockettune " + command in capsys.readouterr().out
