"""Helpers for the Android client's tests: run scripts/jvm_tests.sh, export tokenizers as the exporter does.

Not a conftest (a second ``conftest`` module would shadow ``tests/conftest.py``): the tests here
import this module, which also puts the coordinator and fleet harnesses on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
for _folder in ("coordinator", "fleet"):
    if str(TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(TESTS / _folder))

JVM_TESTS = REPO / "scripts" / "jvm_tests.sh"
VECTORS = REPO / "tests" / "protocol" / "tokenizer_vectors.json"
SUMMARY = re.compile(r"^jvm tests: (\d+) passed, (\d+) failed, (\d+) skipped$", re.MULTILINE)
#: The tokenizers the shared vectors cover: the tiny test model's and SmolLM2-135M's.
TOKENIZER_NAMES = ("tiny", "smollm2-135m")


def run_jvm_tests(mode: str, env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str, tuple[int, int, int]]:
    """Run ``scripts/jvm_tests.sh MODE``; returns (exit code, output, (passed, failed, skipped))."""
    result = subprocess.run(["bash", str(JVM_TESTS), mode], cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    found = SUMMARY.findall(result.stdout)
    counts = tuple(int(x) for x in found[-1]) if found else (0, 0, 0)
    return result.returncode, result.stdout, counts


def load_tokenizer(name: str):
    """The tokenizer a model name resolves to, loaded the way models/registry.py loads it."""
    if name == "tiny":
        from models.registry import build_byte_tokenizer

        return build_byte_tokenizer()
    if name == "smollm2-135m":
        from transformers import AutoTokenizer

        from models.registry import smollm2_dir

        return AutoTokenizer.from_pretrained(str(smollm2_dir()))
    raise ValueError(name)


def export_tokenizer(name: str, out_dir: Path) -> Path:
    """``save_pretrained`` into ``out_dir/name``, exactly as export/pipeline.py ships it to phones."""
    target = Path(out_dir) / name
    load_tokenizer(name).save_pretrained(target)
    return target / "tokenizer.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
