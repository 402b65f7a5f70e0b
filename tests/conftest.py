"""Shared fixtures: tiny-model artifacts exported once per test session.

Exporting even the tiny preset takes ~20 s on 2 cores (graph capture and lowering dominate),
so the fp32 and int8 artifacts are built once and shared by every test that only reads them.
Tests that train the eager model get a fresh build, never a shared one.
"""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

TINY_BATCH, TINY_SEQ = 2, 32


def tiny_tier(**overrides):
    """The tests' tiny tier. Tests that are not about kernels pass ``kernels="portable"``: the
    export takes ~10 s instead of ~45 s (XNNPACK lowers each delegate partition separately), and
    XNNPACK is exercised by the shared fixtures below and tests/test_training_speed.py."""
    from models.tier import Tier, TrainingHyperparameters

    fields = dict(lora_rank=4, lora_layers=2, batch=TINY_BATCH, seq=TINY_SEQ,
                  train=TrainingHyperparameters(lr=0.5, local_steps=20))
    fields.update(overrides)
    return Tier(**fields)


def tiny_lora_everywhere(rank: int = 4, layers: int | None = None, seed: int = 0):
    """The tiny model with LoRA on its last ``layers`` layers (all by default, as split learning
    needs: the device trains the bottom's), every lora_B drawn at random so no gradient is zero."""
    import torch

    from models.lora import apply_lora, resolve_layout
    from models.registry import load_base_model

    base = load_base_model("tiny")
    depth = base.config.num_hidden_layers
    peft = apply_lora(base.model, resolve_layout(depth, rank, layers or depth))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return peft


def tiny_batches(tokenizer, count=2):
    """Real BBC News text, tokenized and padded as devices do, ``count`` batches."""
    from models.batching import make_batches
    from models.corpora import bbc_news

    texts = [d.text for d in bbc_news("train")[: TINY_BATCH * count]]
    return make_batches(tokenizer, texts, TINY_BATCH, TINY_SEQ)


@pytest.fixture(scope="session")
def tiny_fp32_artifact(tmp_path_factory):
    from export.pipeline import export_artifact

    out = tmp_path_factory.mktemp("tiny") / "fp32"
    training, manifest = export_artifact("tiny", tiny_tier(), out)
    return out, training, manifest


@pytest.fixture(scope="session")
def tiny_int8_artifact(tmp_path_factory):
    from export.pipeline import export_artifact

    out = tmp_path_factory.mktemp("tiny") / "int8"
    training, manifest = export_artifact("tiny", tiny_tier(quantize="int8"), out)
    return out, training, manifest


@pytest.fixture(scope="session")
def tiny_prefix_artifact(tmp_path_factory):
    """LoRA in the last 2 of 4 layers with frozen-prefix caching: prefix.pte + a top training program."""
    from export.pipeline import export_artifact

    out = tmp_path_factory.mktemp("tiny") / "prefix"
    training, manifest = export_artifact("tiny", tiny_tier(prefix_cache=True), out)
    return out, training, manifest
