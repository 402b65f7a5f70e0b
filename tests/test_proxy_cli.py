"""``pockettune generate`` on tiny models: output, JSON, and one-line exit-2 refusals."""

from __future__ import annotations

import json

import pytest

from models.proxy import GenerationSettings, ProxyTunedLM
from models.registry import load_base_model
from pockettune.cli import main
from tests.test_proxy import tuned_small


@pytest.fixture(scope="module")
def small_and_adapter(tmp_path_factory):
    """A pruned tiny model saved as a Hugging Face directory, and its (random-B) adapter as PEFT."""
    root = tmp_path_factory.mktemp("proxy-cli")
    small_dir, adapter_dir = root / "small", root / "adapter"
    peft_model, tokenizer = tuned_small(save_base_to=small_dir)
    peft_model.save_pretrained(str(adapter_dir))
    return small_dir, adapter_dir, peft_model, tokenizer


def run_cli(capsys, *args):
    capsys.readouterr()                  # only this command's output below
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_prints_the_proxy_tuned_continuation(small_and_adapter, capsys):
    small_dir, adapter_dir, peft_model, tokenizer = small_and_adapter
    code, out, err = run_cli(capsys, "--large", "tiny", "--small", str(small_dir), "--adapter", str(adapter_dir),
                             "--alpha", "1.5", "--prompt", "Topic:", "--max-new-tokens", "8", "--json")
    assert code == 0, err
    result = json.loads(out)
    large = load_base_model("tiny")
    expected = ProxyTunedLM.from_peft(large.model, large.tokenizer, peft_model, tokenizer, alpha=1.5).generate(
        "Topic:", GenerationSettings(alpha=1.5, max_new_tokens=8))
    assert result["token_ids"] == expected.token_ids and len(result["token_ids"]) == 8
    assert result["alpha"] == 1.5 and result["prompt_tokens"] == 6
    code, out, _ = run_cli(capsys, "--large", "tiny", "--small", str(small_dir), "--adapter", str(adapter_dir),
                           "--alpha", "1.5", "--prompt", "Topic:", "--max-new-tokens", "8")
    assert code == 0 and out == "Topic:" + expected.text + "\n"


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--alpha" in text and "logits_S_tuned - logits_S_base" in text


@pytest.mark.parametrize("extra, message", [
    (["--alpha", "-1"], "alpha must be between 0"),
    (["--alpha", "nan"], "alpha must be a finite number"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer from 1 to 256"),
    (["--max-new-tokens", "1000"], "max_new_tokens must be an integer from 1 to 256"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--prompt", "  "], "--prompt is empty"),
    (["--prompt", "y" * 600], "the prompt is 600 tokens; at most 448 fit"),
    (["--large", "no-such-model"], "--large 'no-such-model' is not a preset"),
])
def test_bad_input_is_one_line_exit_2(small_and_adapter, capsys, extra, message):
    small_dir, adapter_dir, _, _ = small_and_adapter
    args = ["--large", "tiny", "--small", str(small_dir), "--adapter", str(adapter_dir), "--prompt", "hi"] + extra
    code, _, err = run_cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("pockettune generate: error:")
    assert message in lines[0]


def test_missing_adapter_and_mismatched_tokenizer_are_refused(small_and_adapter, capsys, tmp_path):
    small_dir, adapter_dir, _, _ = small_and_adapter
    code, _, err = run_cli(capsys, "--large", "tiny", "--small", str(small_dir), "--adapter", str(tmp_path),
                           "--prompt", "hi")
    assert code == 2 and "is not a PEFT adapter directory" in err
    # S saved with a different tokenizer: its token ids no longer mean L's strings.
    from tests.test_proxy import _word_tokenizer

    other = tmp_path / "other-small"
    load_base_model(str(small_dir)).model.save_pretrained(str(other))
    _word_tokenizer().save_pretrained(str(other))
    code, _, err = run_cli(capsys, "--large", "tiny", "--small", str(other), "--adapter", str(adapter_dir),
                           "--prompt", "hi")
    assert code == 2 and "the tokenizers differ" in err and len(err.strip().splitlines()) == 1
    # An adapter trained on the pruned model does not fit the unpruned one.
    code, _, err = run_cli(capsys, "--large", "tiny", "--small", "tiny", "--adapter", str(adapter_dir),
                           "--prompt", "hi")
    assert code == 2 and "does not fit tiny" in err


def test_console_script_runs(small_and_adapter, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    small_dir, adapter_dir, _, _ = small_and_adapter
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pockettune", "generate", "--large", "tiny", "--small",
                           str(small_dir), "--adapter", str(adapter_dir), "--prompt", "ab", "--max-new-tokens", "3",
                           "--temperature", "0.8", "--seed", "5", "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.loads(proc.stdout)["token_ids"]) == 3
