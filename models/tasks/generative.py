"""Generative tasks: the model learns to produce a text, scored by its perplexity.

Shared by chatterbot QA and by a device's own text (``TextFileTask``): the target tokens and a
closing end-of-sequence token carry the loss, and evaluation is the perplexity of exactly
those tokens, so the number a device trains on and the number the coordinator reports are
one quantity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from models.batching import IGNORE_INDEX
from models.intervals import perplexity_interval
from models.tasks.base import Example, Task, causal_lm_parts


class GenerativeTask(Task):
    metric = "perplexity"
    appends_eos = True
    scores_through_decoder = True

    @torch.inference_mode()
    def evaluate(self, model, tokenizer, examples: Sequence[Example], seq: int, batch: int = 16) -> dict:
        """Perplexity of the answers (and end-of-sequence) given the questions, with a 95%
        bootstrap interval over the examples (each answer's NLL and token count resampled together)."""
        if not examples:
            raise ValueError("nothing to evaluate: no examples")
        decoder, lm_head = causal_lm_parts(model)
        example_nll, example_tokens = [], []
        for start in range(0, len(examples), batch):
            ids, labels = (torch.stack(t) for t in zip(*(self.encode(tokenizer, e, seq)
                                                         for e in examples[start:start + batch])))
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
            scored = labels[:, 1:] != IGNORE_INDEX          # position t predicts token t+1
            logits = lm_head(hidden[:, :-1][scored]).float()
            nll = torch.nn.functional.cross_entropy(logits, labels[:, 1:][scored], reduction="none").double()
            rows = scored.nonzero()[:, 0]
            example_nll += torch.zeros(len(ids), dtype=torch.float64).index_add_(0, rows, nll).tolist()
            example_tokens += scored.sum(dim=1).tolist()
        loss = sum(example_nll) / sum(example_tokens)
        return {"metric": self.metric, "value": math.exp(loss), "loss": loss, "num_examples": len(examples),
                "ci95": list(perplexity_interval(example_nll, example_tokens))}


class TextFileTask(GenerativeTask):
    """A device's own text file: each paragraph (blank-line separated) is one example.

    Not registered by name: it exists only on the device that holds the file.
    """

    name = "text"
    description = "language modelling of a local text file"

    def __init__(self, path: Path):
        self.path = Path(path)
        text = self.path.read_text(encoding="utf-8", errors="replace")
        paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
        if not paragraphs:
            raise ValueError(f"{self.path} holds no text to train on")
        self._examples = [Example(example_id=f"{self.path.name}/{i}", context="", prompt="", target=p,
                                  label="text") for i, p in enumerate(paragraphs)]

    def examples(self, split: str) -> list[Example]:
        if split != "train":
            raise ValueError("a local text file has only a train split")
        return list(self._examples)
