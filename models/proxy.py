"""Federated proxy-tuning (FedPT): steer a large base model with a small tuned model's logit offset.

Devices can afford to tune a small model S (e.g. SmolLM2 pruned to half width) but not the
large model L. The server never trains or ships L; at every next-token prediction it adds
what federated tuning changed in S to L's own prediction:

    logits = logits_L + alpha * (logits_S_tuned - logits_S_base)

``logits_S_tuned - logits_S_base`` is the *direction* tuning moved S on this context (more
of the topic word, the answer style); L keeps its larger model's knowledge of everything
else. ``alpha`` scales the steering (0 is L alone; 1 is the offset as S learned it).

All three models must read and write one vocabulary: the sum is over token ids, so a token
id must mean the same string in L and in S. :func:`check_same_tokenizer` refuses anything
else with a message saying what to do. In PocketTune S is naturally the job's (pruned)
artifact model and L the unpruned base it was pruned from, which share the tokenizer by
construction.

What is here:

- :class:`ProxyTunedLM`: full proxy logits for a batch, and ``get_decoder`` /
  ``get_output_embeddings`` shaped like a Hugging Face causal LM's, so a task's own
  ``evaluate`` (BBC News label log-likelihood, chatterbot perplexity) scores the proxy-tuned
  model through exactly the code path that scores every other model;
- :meth:`ProxyTunedLM.generate`: greedy or sampled (temperature, top-p, seeded
  ``torch.Generator``) decoding that keeps one ``DynamicCache`` per model, so each new token
  costs one forward of each model on one token, and stops at end-of-sequence;
- :class:`GenerationSettings`: the bounds the CLI and the coordinator enforce on requests.

When S_base and S_tuned are one PEFT model (the usual case: the artifact model with the
global adapter loaded), S_base is that model with its adapters switched off
(``disable_adapter``), so S's weights are held once.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

#: alpha outside this range is refused: beyond a few times the learned offset the sum is
#: dominated by S's difference and stops being "L, steered".
MAX_ALPHA = 10.0
MAX_NEW_TOKENS = 256
MAX_PROMPT_TOKENS = 1024
MAX_TEMPERATURE = 5.0


class TokenizerMismatchError(ValueError):
    """L and S do not share a vocabulary, so their logits cannot be added token by token."""


class GenerationSettingsError(ValueError):
    """A generation request outside the accepted bounds (alpha, lengths, sampling settings)."""


# --- tokenizer compatibility -------------------------------------------------------------------

def _special_ids(tokenizer) -> dict[str, int | None]:
    return {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "unk")}


def _output_size(model) -> int:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(inner.get_output_embeddings().weight.shape[0])


def check_same_tokenizer(large_tokenizer, small_tokenizer, large_model=None, small_model=None) -> None:
    """Raise :class:`TokenizerMismatchError` unless L's and S's token ids mean the same strings.

    Compared: the full vocabulary (string -> id), the special tokens' ids and, when the
    models are given, the width of their output layers (the logits being added).
    """
    hint = ("proxy-tuning adds the two models' logits token by token, so S must use L's tokenizer: "
            "use a small model pruned from L (models/pruning.py) or one of the same model family")
    large_vocab, small_vocab = large_tokenizer.get_vocab(), small_tokenizer.get_vocab()
    if large_vocab != small_vocab:
        differing = sorted(set(large_vocab.items()) ^ set(small_vocab.items()), key=lambda kv: kv[1])[:3]
        raise TokenizerMismatchError(
            f"the tokenizers differ: L has {len(large_vocab)} tokens, S {len(small_vocab)}; first differences "
            f"{[token for token, _ in differing]}; {hint}")
    large_special, small_special = _special_ids(large_tokenizer), _special_ids(small_tokenizer)
    if large_special != small_special:
        raise TokenizerMismatchError(f"the special tokens differ: L {large_special}, S {small_special}; {hint}")
    if large_model is not None and small_model is not None:
        large_out, small_out = _output_size(large_model), _output_size(small_model)
        if large_out != small_out:
            raise TokenizerMismatchError(
                f"the models predict over different vocabularies: L {large_out} logits, S {small_out}; {hint}")


# --- the three logit sources -------------------------------------------------------------------

@dataclass
class LogitSource:
    """One model whose logits enter the sum; ``adapters_off`` runs a PEFT model as its base."""

    model: torch.nn.Module
    adapters_off: bool = False

    def context(self):
        return self.model.disable_adapter() if self.adapters_off else nullcontext()

    def parts(self):
        """(decoder, lm_head) of the underlying Hugging Face model (PEFT wrapper removed)."""
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return inner.get_decoder(), inner.get_output_embeddings()

    def hidden_size(self) -> int:
        return int(self.parts()[1].weight.shape[1])

    def forward(self, input_ids, attention_mask=None, past_key_values=None, logits_to_keep: int = 0):
        with self.context():
            return self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                              use_cache=past_key_values is not None, logits_to_keep=logits_to_keep)


class _StackedDecoder(torch.nn.Module):
    """Runs the three decoders and returns their last hidden states side by side.

    A task's evaluation selects a few positions of ``last_hidden_state`` and projects only
    those through the LM head; stacking the hidden states on the feature axis lets it do the
    same here without knowing there are three models, and :class:`_ProxyHead` then turns the
    selected rows into proxy logits.
    """

    def __init__(self, proxy: "ProxyTunedLM"):
        super().__init__()
        self._proxy = proxy

    def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
        hidden = []
        for source in self._proxy.sources:
            decoder, _ = source.parts()
            with source.context():
                hidden.append(decoder(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False).last_hidden_state)
        return SimpleNamespace(last_hidden_state=torch.cat(hidden, dim=-1))


class _ProxyHead(torch.nn.Module):
    """Stacked hidden states -> ``logits_L + alpha * (logits_S_tuned - logits_S_base)``."""

    def __init__(self, proxy: "ProxyTunedLM"):
        super().__init__()
        self._proxy = proxy

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        sizes = [source.hidden_size() for source in self._proxy.sources]
        logits = [source.parts()[1](h).float() for source, h in zip(self._proxy.sources, stacked.split(sizes, dim=-1))]
        return self._proxy.combine(*logits)


# --- the proxy-tuned model ---------------------------------------------------------------------

@dataclass
class GenerationResult:
    """What :meth:`ProxyTunedLM.generate` produced, and at what cost."""

    token_ids: list[int]
    text: str
    prompt_tokens: int
    stopped_at_eos: bool
    seconds: float
    #: forward passes per model: 1 for the prompt, then 1 per generated token after the first.
    forwards_per_model: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode: greedy when ``temperature`` is 0, else sampled with top-p and a seed."""

    alpha: float = 1.0
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> "GenerationSettings":
        """Raise :class:`GenerationSettingsError` naming the bad field and the accepted range."""
        for name in ("alpha", "temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise GenerationSettingsError(f"{name} must be a finite number, not {value!r}")
        if not 0.0 <= self.alpha <= MAX_ALPHA:
            raise GenerationSettingsError(
                f"alpha must be between 0 (the large model alone) and {MAX_ALPHA:g}, not {self.alpha:g}; 1 applies "
                "the small model's learned offset as it is")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise GenerationSettingsError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, "
                                          f"not {self.max_new_tokens!r}")
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise GenerationSettingsError(f"temperature must be between 0 (greedy) and {MAX_TEMPERATURE:g}, "
                                          f"not {self.temperature:g}")
        if not 0.0 < self.top_p <= 1.0:
            raise GenerationSettingsError(f"top_p must be in (0, 1], not {self.top_p:g}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise GenerationSettingsError(f"seed must be a non-negative integer, not {self.seed!r}")
        return self


class ProxyTunedLM:
    """L steered by S's tuning: ``logits_L + alpha * (logits_S_tuned - logits_S_base)``.

    ``large``, ``small_tuned`` and ``small_base`` are Hugging Face causal LMs (or
    :class:`LogitSource` s); ``tokenizer`` is L's and ``small_tokenizer`` S's (checked to be
    the same vocabulary). All models are used in inference mode and never modified.
    """

    def __init__(self, large, small_tuned, small_base, tokenizer, alpha: float = 1.0, small_tokenizer=None):
        self.sources = [s if isinstance(s, LogitSource) else LogitSource(s) for s in (large, small_tuned, small_base)]
        self.tokenizer = tokenizer
        check_same_tokenizer(tokenizer, small_tokenizer if small_tokenizer is not None else tokenizer,
                             self.sources[0].model, self.sources[1].model)
        if _output_size(self.sources[1].model) != _output_size(self.sources[2].model):
            raise TokenizerMismatchError("S_tuned and S_base predict over different vocabularies: "
                                         "they must be the same small model with and without the adapter")
        GenerationSettings(alpha=alpha).validate()
        self.alpha = float(alpha)

    @classmethod
    def from_peft(cls, large, large_tokenizer, small_peft, small_tokenizer, alpha: float = 1.0) -> "ProxyTunedLM":
        """S_tuned is ``small_peft`` as it is; S_base the same model with its adapters disabled."""
        if not hasattr(small_peft, "disable_adapter"):
            raise TypeError("from_peft needs S as a PEFT model (its adapter is switched off for S_base)")
        return cls(large, LogitSource(small_peft), LogitSource(small_peft, adapters_off=True), large_tokenizer,
                   alpha=alpha, small_tokenizer=small_tokenizer)

    # --- scoring ---------------------------------------------------------------------------------

    def combine(self, large: torch.Tensor, small_tuned: torch.Tensor, small_base: torch.Tensor,
                alpha: float | None = None) -> torch.Tensor:
        """The proxy-tuning formula on three logit tensors of one shape (in fp32); ``alpha``
        defaults to the model's own."""
        alpha = self.alpha if alpha is None else alpha
        return large.float() + alpha * (small_tuned.float() - small_base.float())

    @torch.inference_mode()
    def component_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[batch, seq, vocab] logits of L, S_tuned and S_base on ``input_ids``."""
        return tuple(source.forward(input_ids, attention_mask).logits.float() for source in self.sources)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq, vocab] proxy-tuned logits at every position."""
        return self.combine(*self.component_logits(input_ids, attention_mask))

    def get_decoder(self):
        """A decoder-like module (see :class:`_StackedDecoder`) for tasks' scoring code."""
        return _StackedDecoder(self)

    def get_output_embeddings(self):
        """The matching head: stacked hidden states -> proxy logits."""
        return _ProxyHead(self)

    # --- decoding --------------------------------------------------------------------------------

    @torch.inference_mode()
    def _next_logits(self, ids: torch.Tensor, caches, alpha: float) -> torch.Tensor:
        """One forward of each model on ``ids`` (the prompt, then one token), extending its cache."""
        logits = [source.forward(ids, past_key_values=cache, logits_to_keep=1).logits[0, -1]
                  for source, cache in zip(self.sources, caches)]
        return self.combine(*logits, alpha=alpha)

    @torch.inference_mode()
    def generate(self, prompt: str | list[int], settings: GenerationSettings | None = None) -> GenerationResult:
        """Continue ``prompt`` (text, or token ids) under the proxy-tuned distribution.

        The prompt is encoded without special tokens (as tasks encode their prompts). Decoding
        stops after ``max_new_tokens`` or at the tokenizer's end-of-sequence token.
        """
        from transformers import DynamicCache

        settings = (settings or GenerationSettings(alpha=self.alpha)).validate()
        alpha = float(settings.alpha)      # this call's alpha; the model's own is left as it is
        ids = self.encode_prompt(prompt, settings.max_new_tokens)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(settings.seed)
        caches = [DynamicCache() for _ in self.sources]
        logits = self._next_logits(torch.tensor([ids]), caches, alpha)
        eos = self.tokenizer.eos_token_id
        out, stopped, forwards = [], False, 1
        for step in range(settings.max_new_tokens):
            token = pick_token(logits, settings.temperature, settings.top_p, generator)
            if eos is not None and token == eos:
                stopped = True
                break
            out.append(token)
            if step + 1 < settings.max_new_tokens:
                logits = self._next_logits(torch.tensor([[token]]), caches, alpha)
                forwards += 1
        return GenerationResult(token_ids=out, text=self.tokenizer.decode(out), prompt_tokens=len(ids),
                                stopped_at_eos=stopped, seconds=time.perf_counter() - started,
                                forwards_per_model=forwards)

    def encode_prompt(self, prompt: str | list[int], max_new_tokens: int = 0) -> list[int]:
        """Token ids of ``prompt``; :class:`GenerationSettingsError` if empty or too long."""
        ids = list(prompt) if not isinstance(prompt, str) else \
            self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise GenerationSettingsError("the prompt is empty: give some text to continue")
        limit = min(MAX_PROMPT_TOKENS, self.context_length() - max_new_tokens)
        if len(ids) > limit:
            raise GenerationSettingsError(
                f"the prompt is {len(ids)} tokens; at most {limit} fit with max_new_tokens {max_new_tokens}: "
                "shorten it or ask for fewer new tokens")
        return ids

    def context_length(self) -> int:
        """The shortest maximum sequence length of the models (positions they were built for)."""
        lengths = [getattr(getattr(source.parts()[0], "config", None), "max_position_embeddings", None)
                   for source in self.sources]
        known = [int(n) for n in lengths if n]
        return min(known) if known else MAX_PROMPT_TOKENS + MAX_NEW_TOKENS


def pick_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy (``temperature`` 0) or nucleus sampling from one [vocab] logit vector.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p``
    (the most likely token always stays), renormalized; the draw uses ``generator`` so a
    seed reproduces a completion.
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs   # mass of the tokens ranked above
        sorted_probs[before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def load_small_with_adapter(small: str, adapter_dir):
    """S as a PEFT model: a base model (name or HF directory) with the PEFT adapter in ``adapter_dir``.

    Returns ``(peft_model, tokenizer)``. Raises ``ValueError`` when the adapter does not fit
    the model (e.g. an adapter trained on a pruned model, loaded onto the unpruned one).
    """
    from pathlib import Path

    from peft import PeftModel

    from models.registry import load_base_model

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    base = load_base_model(small)
    try:
        model = PeftModel.from_pretrained(base.model, str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"the adapter in {adapter_dir} does not fit {small}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, base.tokenizer
