"""Proxy-tuning (models/proxy.py) on the tiny preset: the formula, decoding, refusals.

L is the tiny model; S is the tiny model pruned to half width with LoRA on its last two
layers, whose B matrices are drawn at random so that S_tuned really differs from S_base
(a fresh adapter has B = 0 and would make every offset zero, which no test could tell
from a broken one).
"""

from __future__ import annotations

import math

import pytest
import torch

from models.lora import apply_lora, resolve_layout
from models.proxy import (GenerationSettings, GenerationSettingsError, LogitSource, ProxyTunedLM,
                          TokenizerMismatchError, check_same_tokenizer, pick_token)
from models.pruning import PruningConfig, prune_model
from models.registry import build_byte_tokenizer, load_base_model
from models.tasks import get_task


def tuned_small(seed: int = 1, save_base_to=None):
    """The pruned tiny model with a random-B LoRA adapter (the pruned base saved first, if asked)."""
    small = load_base_model("tiny")
    prune_model(small.model, PruningConfig(ratio=0.5, method="width"))
    if save_base_to is not None:
        small.model.save_pretrained(str(save_base_to))
        small.tokenizer.save_pretrained(str(save_base_to))
    peft_model = apply_lora(small.model, resolve_layout(small.model.config.num_hidden_layers, 4, 2))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    peft_model.eval()
    return peft_model, small.tokenizer


@pytest.fixture(scope="module")
def models():
    large = load_base_model("tiny")
    small, small_tokenizer = tuned_small()
    return large, small, small_tokenizer


def ids_batch():
    return torch.tensor([[3 + (7 * i + j) % 250 for j in range(24)] for i in range(3)])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.5])
def test_proxy_logits_equal_the_formula(models, alpha):
    large, small, small_tokenizer = models
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=alpha)
    ids = ids_batch()
    with torch.no_grad():
        logits_l = large.model(input_ids=ids).logits
        logits_tuned = small(input_ids=ids).logits
        with small.disable_adapter():
            logits_base = small(input_ids=ids).logits
    offset = logits_tuned - logits_base
    assert offset.abs().max() > 0.1, "the test adapter must move S's logits"
    expected = logits_l + alpha * offset
    got = proxy.logits(ids)
    assert got.shape == (3, 24, large.model.config.vocab_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if alpha == 0.0:
        torch.testing.assert_close(got, logits_l, rtol=0, atol=0)


def test_separate_base_model_is_the_same_as_adapters_switched_off(models):
    large, small, small_tokenizer = models
    base_copy = load_base_model("tiny")
    prune_model(base_copy.model, PruningConfig(ratio=0.5, method="width"))
    separate = ProxyTunedLM(large.model, small, base_copy.model, large.tokenizer, alpha=1.0,
                            small_tokenizer=small_tokenizer)
    shared = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=1.0)
    torch.testing.assert_close(separate.logits(ids_batch()), shared.logits(ids_batch()), rtol=0, atol=1e-5)


def test_task_scoring_through_the_proxy_is_the_formula(models):
    """chatterbot's own evaluate on the proxy equals the perplexity of the formula's logits."""
    large, small, small_tokenizer = models
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=1.5)
    task = get_task("chatterbot")
    examples = task.eval_examples(6)
    result = task.evaluate(proxy, proxy.tokenizer, examples, seq=48, batch=4)
    nll, count = 0.0, 0
    for example in examples:
        ids, labels = task.encode(proxy.tokenizer, example, 48)
        logits = proxy.logits(ids[None])[0, :-1]
        scored = labels[1:] != -100
        nll += float(torch.nn.functional.cross_entropy(logits[scored], labels[1:][scored], reduction="sum"))
        count += int(scored.sum())
    assert result["num_examples"] == 6
    assert result["value"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_bbcnews_scoring_runs_on_the_proxy(models):
    large, small, small_tokenizer = models
    task = get_task("bbcnews")
    examples = task.eval_examples(5)
    at_zero = task.evaluate(ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=0.0),
                            large.tokenizer, examples, seq=48)
    alone = task.evaluate(large.model, large.tokenizer, examples, seq=48)
    assert at_zero["loss"] == pytest.approx(alone["loss"], rel=1e-5)   # alpha 0 is L alone
    steered = task.evaluate(ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=2.0),
                            large.tokenizer, examples, seq=48)
    assert steered["loss"] != pytest.approx(alone["loss"], rel=1e-3)


def test_greedy_decoding_with_caches_matches_recomputing_everything(models):
    large, small, small_tokenizer = models
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=1.0)
    result = proxy.generate("The news today:", GenerationSettings(alpha=1.0, max_new_tokens=12))
    assert len(result.token_ids) == 12 and not result.stopped_at_eos
    assert result.forwards_per_model == 12           # the prompt once, then one per new token but the last
    sequence = large.tokenizer("The news today:", add_special_tokens=False)["input_ids"]
    assert result.prompt_tokens == len(sequence)
    for token in result.token_ids:
        assert int(proxy.logits(torch.tensor([sequence]))[0, -1].argmax()) == token
        sequence.append(token)
    assert result.text == large.tokenizer.decode(result.token_ids)


def test_generation_settings_override_alpha_only_for_that_call(models):
    large, small, small_tokenizer = models
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=1.0)
    at_zero = proxy.generate("abc", GenerationSettings(alpha=0.0, max_new_tokens=6))
    assert proxy.alpha == 1.0
    alone = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=0.0)
    assert at_zero.token_ids == alone.generate("abc", GenerationSettings(alpha=0.0, max_new_tokens=6)).token_ids


def test_sampling_is_reproducible_by_seed(models):
    large, small, small_tokenizer = models
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=1.0)
    settings = GenerationSettings(alpha=1.0, max_new_tokens=10, temperature=1.0, top_p=0.95, seed=7)
    first, again = proxy.generate("hello", settings), proxy.generate("hello", settings)
    assert first.token_ids == again.token_ids
    others = {tuple(proxy.generate("hello", GenerationSettings(alpha=1.0, max_new_tokens=10, temperature=1.0,
                                                               seed=s)).token_ids) for s in range(3)}
    assert len(others) > 1
    # A nucleus this small holds only the most likely token: sampling becomes greedy.
    narrow = proxy.generate("hello", GenerationSettings(alpha=1.0, max_new_tokens=8, temperature=1.0, top_p=1e-6))
    assert narrow.token_ids == proxy.generate("hello", GenerationSettings(alpha=1.0, max_new_tokens=8)).token_ids


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    drawn = {pick_token(logits, 1.0, 0.75, torch.Generator().manual_seed(s)) for s in range(200)}
    assert drawn == {0, 1}            # 0.5 + 0.3 reaches 0.75; tokens 2 and 3 are cut
    assert pick_token(logits, 0.0, 1.0, torch.Generator()) == 0


def test_decoding_stops_at_end_of_sequence(models):
    large, small, small_tokenizer = models
    free = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=1.0)
    tokens = free.generate("stop here", GenerationSettings(max_new_tokens=10)).token_ids
    stop_at = 2 if tokens[2] not in tokens[:2] else tokens.index(tokens[2])
    tokenizer = build_byte_tokenizer()
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(tokens[stop_at])   # that token now ends a text
    stopping = ProxyTunedLM.from_peft(large.model, tokenizer, small, tokenizer, alpha=1.0)
    result = stopping.generate("stop here", GenerationSettings(max_new_tokens=10))
    assert result.stopped_at_eos and result.token_ids == tokens[:stop_at]


def _word_tokenizer():
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("the news sport tech".split())}}
    tok = Tokenizer(tk_models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def test_mismatched_tokenizers_are_refused(models):
    large, small, _ = models
    with pytest.raises(TokenizerMismatchError, match="tokenizers differ: L has 259 tokens, S 7.*must use L.s tokenizer"):
        ProxyTunedLM.from_peft(large.model, large.tokenizer, small, _word_tokenizer())
    shifted = build_byte_tokenizer()
    shifted.eos_token = "<pad>"
    with pytest.raises(TokenizerMismatchError, match="special tokens differ"):
        check_same_tokenizer(large.tokenizer, shifted)


def test_models_with_different_vocabularies_are_refused(models):
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.registry import TINY_CONFIG

    large, small, small_tokenizer = models
    wider = LlamaForCausalLM(LlamaConfig(**{**TINY_CONFIG, "vocab_size": 300})).eval()
    with pytest.raises(TokenizerMismatchError, match="different vocabularies: L 300 logits, S 259"):
        ProxyTunedLM.from_peft(wider, large.tokenizer, small, small_tokenizer)
    with pytest.raises(TokenizerMismatchError, match="S_tuned and S_base"):
        ProxyTunedLM(large.model, small, LogitSource(wider), large.tokenizer)


@pytest.mark.parametrize("settings, message", [
    (dict(alpha=-0.5), "alpha must be between 0"),
    (dict(alpha=10.5), "alpha must be between 0"),
    (dict(alpha=float("nan")), "alpha must be a finite number"),
    (dict(max_new_tokens=0), "max_new_tokens must be an integer from 1 to 256"),
    (dict(max_new_tokens=257), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature must be between 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(seed=-1), "seed must be a non-negative integer"),
])
def test_bad_generation_settings_are_refused(settings, message):
    with pytest.raises(GenerationSettingsError, match=message):
        GenerationSettings(**settings).validate()


def test_bad_alpha_and_prompts_are_refused(models):
    large, small, small_tokenizer = models
    with pytest.raises(GenerationSettingsError, match="alpha"):
        ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer, alpha=-1)
    proxy = ProxyTunedLM.from_peft(large.model, large.tokenizer, small, small_tokenizer)
    with pytest.raises(GenerationSettingsError, match="prompt is empty"):
        proxy.generate("")
    with pytest.raises(GenerationSettingsError, match="prompt is 1100 tokens; at most 508 fit with max_new_tokens 4: shorten it"):
        proxy.generate("x" * 1100, GenerationSettings(max_new_tokens=4))
    with pytest.raises(GenerationSettingsError, match="at most 412 fit with max_new_tokens 100"):
        proxy.generate("x" * 500, GenerationSettings(max_new_tokens=100))   # tiny has 512 positions
