"""What a federated task is: examples, how they become training tensors, how a model is scored.

A task owns its text format. Training and evaluation must agree token for token on that
format (a classifier trained on "...\\nTopic: sport" and scored on "...\\nTopic:sport" would
look broken), so both go through :meth:`Task.encode` / :meth:`Task.prompt_ids` here, on the
device, in the coordinator's evaluator and in the centralized baseline alike.

An :class:`Example` is three strings: ``context`` (long text that may be cut to fit the
program's sequence length), ``prompt`` (the fixed cue after it, never cut) and ``target``
(what the model learns to produce: the only tokens with a loss). Tokenizing the three
separately and concatenating is what lets a cut never split the cue or the answer.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from models.batching import IGNORE_INDEX, pad_token_id
from models.plugin_registry import Registry

SPLITS = ("train", "heldout")


class UnknownTaskError(KeyError):
    """No task is registered under that name."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Example:
    """One training or evaluation example; ``label`` is its class (partitioning, accuracy)."""

    example_id: str
    context: str
    prompt: str
    target: str
    label: str


def stable_order(example_id: str, seed: int = 0) -> int:
    """A machine-independent pseudo-random rank for an example (hash of seed and id)."""
    return int(hashlib.sha256(f"{seed}:{example_id}".encode()).hexdigest()[:12], 16)


class Task(ABC):
    """A dataset with a text format and an evaluation metric."""

    name: ClassVar[str]
    #: "accuracy" (higher is better) or "perplexity" (lower is better).
    metric: ClassVar[str]
    description: ClassVar[str] = ""
    #: True when :meth:`evaluate` reaches the model only through :func:`causal_lm_parts`
    #: (a decoder called with ``input_ids=`` and an LM head): the coordinator may then hand it
    #: a :class:`models.frozen_prefix.FrozenPrefixModel`, which runs the frozen bottom once.
    scores_through_decoder: ClassVar[bool] = False

    @abstractmethod
    def examples(self, split: str) -> list[Example]:
        """Every example of ``split`` ("train" or "heldout"), in a stable order.

        Splits must be disjoint by content, not only by id (:mod:`models.splitting`): an
        example's text (context, prompt and target, normalized) is on one side at most.
        """

    def duplicates_dropped(self, split: str) -> int:
        """How many exact duplicates the split collapsed (reported with every evaluation)."""
        return 0

    def split_summary(self) -> dict:
        """Example and dropped-duplicate counts of both splits, for reports."""
        return {split: {"examples": len(self.examples(split)), "duplicates_dropped": self.duplicates_dropped(split)}
                for split in SPLITS}

    # --- tokenization ----------------------------------------------------------------------

    def _encode_parts(self, tokenizer, example: Example, seq: int):
        """(context, prompt, target) token lists cut to fit ``seq``: context first, then target."""
        target_ids = _token_ids(tokenizer, example.target)
        if self.appends_eos and tokenizer.eos_token_id is not None:
            target_ids = target_ids + [int(tokenizer.eos_token_id)]
        if not target_ids:
            raise ValueError(f"example {example.example_id} has an empty target")
        prompt_ids = _token_ids(tokenizer, example.prompt)[-(seq - 1):]   # the cue, at most seq-1 tokens
        target_ids = target_ids[: seq - len(prompt_ids)]                 # the answer, at least one token
        room = seq - len(prompt_ids) - len(target_ids)
        context_ids = _token_ids(tokenizer, example.context, room) if room > 0 else []
        return context_ids, prompt_ids, target_ids

    def prompt_ids(self, tokenizer, example: Example, seq: int, reserve: int) -> list[int]:
        """Context and cue as one token list leaving ``reserve`` tokens for an answer (scoring)."""
        prompt_ids = _token_ids(tokenizer, example.prompt)[-(seq - reserve):]
        room = seq - reserve - len(prompt_ids)
        return (_token_ids(tokenizer, example.context, room) if room > 0 else []) + prompt_ids

    #: generative tasks end the target with the tokenizer's end-of-sequence token, so a tuned
    #: model learns where an answer stops; a class label needs no stop.
    appends_eos: ClassVar[bool] = False

    #: Every target an example can have, when targets come from a fixed set (a classifier's
    #: label words); ``None`` for free text. It is what lets :meth:`max_labelled_positions`
    #: bound a task's labels from a handful of strings instead of tokenizing its whole dataset.
    targets: ClassVar[tuple[str, ...] | None] = None

    def max_labelled_positions(self, tokenizer, seq: int) -> int | None:
        """The most labelled positions any example has once encoded (:meth:`encode`) for ``seq``
        with ``tokenizer``, counted as ``models.batching.labelled_positions_per_row`` counts them (a
        label at position 0 predicts nothing and does not count); ``None``: no bound short of a
        whole row (free-text targets).

        Why: a program compiled with ``Tier.loss_positions`` K computes the loss at the first K
        labelled positions of a row only and trainers refuse a batch with more, so a job must not
        pair such a tier with a task whose examples exceed K (the coordinator checks this when
        the job is created). The default reads :attr:`targets`: the longest target's tokens (and
        the end-of-sequence token when :attr:`appends_eos`), at most ``seq - 1`` (the most any
        row can have). It is an upper bound: a target that ``encode`` cuts to fit a long cue has
        fewer. A task whose targets are neither free text nor a fixed set overrides this.
        """
        if self.targets is None:
            return None
        if not self.targets:
            raise ValueError(f"task {self.name!r} declares an empty set of targets")
        eos = 1 if self.appends_eos and tokenizer.eos_token_id is not None else 0
        longest = max(len(_token_ids(tokenizer, target)) + eos for target in self.targets)
        return min(longest, seq - 1)

    def encode(self, tokenizer, example: Example, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, labels) of length ``seq``: labels are the target tokens, -100 everywhere else."""
        context_ids, prompt_ids, target_ids = self._encode_parts(tokenizer, example, seq)
        head = context_ids + prompt_ids
        ids = torch.full((seq,), pad_token_id(tokenizer), dtype=torch.long)
        labels = torch.full((seq,), IGNORE_INDEX, dtype=torch.long)
        tokens = head + target_ids
        ids[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        labels[len(head): len(tokens)] = torch.tensor(target_ids, dtype=torch.long)
        return ids, labels

    def batches(self, tokenizer, examples: Sequence[Example], batch: int, seq: int
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive examples grouped into full [batch, seq] batches (a short tail is dropped)."""
        encoded = [self.encode(tokenizer, example, seq) for example in examples]
        return [(torch.stack([ids for ids, _ in encoded[i:i + batch]]),
                 torch.stack([labels for _, labels in encoded[i:i + batch]]))
                for i in range(0, len(encoded) - batch + 1, batch)]

    # --- evaluation ------------------------------------------------------------------------

    def eval_examples(self, limit: int | None = None, seed: int = 0) -> list[Example]:
        """A fixed held-out subset: the same ``limit`` examples on every machine and every round."""
        ranked = sorted(self.examples("heldout"), key=lambda e: stable_order(e.example_id, seed))
        return ranked if limit is None else ranked[:limit]

    @abstractmethod
    def evaluate(self, model, tokenizer, examples: Sequence[Example], seq: int, batch: int = 16) -> dict:
        """Score ``model`` on ``examples``: ``{"metric", "value", "loss", "num_examples"}``."""


#: Every federated task, by the name jobs and devices use; members register with :func:`register`.
TASKS: Registry[Task] = Registry("task", unknown_error=UnknownTaskError)

#: Class decorator: make a :class:`Task` subclass available by its ``name``.
register = TASKS.register


def task_names() -> list[str]:
    """Names of the registered tasks, sorted."""
    return TASKS.names()


def get_task(name: str) -> Task:
    """A fresh instance of the task registered as ``name``; :class:`UnknownTaskError` names the known ones."""
    return TASKS.get(name)


def _token_ids(tokenizer, text: str, limit: int | None = None) -> list[int]:
    if not text:
        return []
    if limit is None:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    # Let the tokenizer stop at ``limit`` tokens (no warning about texts longer than the model).
    return tokenizer(text, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"] if limit else []


# --- shared scoring helpers --------------------------------------------------------------------

def causal_lm_parts(model):
    """(decoder, lm_head) of a (PEFT-wrapped) Hugging Face causal LM.

    Scoring needs logits at a few positions only; running the decoder and projecting just
    those hidden states avoids a [batch, seq, vocab] tensor (49k wide for SmolLM2).
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Right-pad token lists into one [len(rows), max_len] tensor (causal: padding after is inert)."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out
