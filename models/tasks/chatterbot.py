"""Question answering on chatterbot-corpus (2,026 English Q/A pairs, 21 categories): perplexity.

A generative task: the model reads ``"Question: ...\\nAnswer:"`` and learns to continue with
the answer and an end-of-sequence token. It is scored by the perplexity of the held-out
answers given their questions (exp of the mean per-token negative log-likelihood), the
measure that says whether a tuned adapter made the model better at *these* conversations.
The category (the YAML file) is each example's label, which a non-IID partition splits by.

The corpus repeats itself (the same question, often with the same answer, in several files), so
the split is by the normalized *question*: every answer of a question is on one side, and a
pair that occurs twice is kept once (:mod:`models.splitting`).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from models.splitting import SplitResult, content_split, split_of_key
from models.tasks.base import Example, register
from models.tasks.generative import GenerativeTask


def chatterbot_dir() -> Path:
    """The English YAML files shipped inside the ``chatterbot-corpus`` package."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("chatterbot QA needs the 'chatterbot-corpus' package: pip install chatterbot-corpus")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


def _text(value) -> str:
    # A few answers in the corpus are YAML lists or numbers rather than strings.
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    return str(value).strip()


def _heldout_or_train(key: str) -> str:
    # The 5% calibration bucket of the shared content split joins training here.
    return "heldout" if split_of_key(key) == "heldout" else "train"


@register
class ChatterbotQA(GenerativeTask):
    name = "chatterbot"
    description = "chatterbot-corpus question answering, answer perplexity"

    def examples(self, split: str) -> list[Example]:
        return self._split(split).items

    def duplicates_dropped(self, split: str) -> int:
        return self._split(split).duplicates_dropped

    def _split(self, split: str) -> SplitResult:
        """Every answer of one question on the same side (grouped by the normalized question),
        and a (question, answer) pair that occurs twice kept once."""
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; use train or heldout")
        return content_split(_all_pairs(), split, text_of=lambda e: e.prompt + e.target,
                             group_of=lambda e: e.prompt, assign=_heldout_or_train)


@functools.lru_cache(maxsize=1)
def _all_pairs() -> tuple[Example, ...]:
    """Every (question, answer) pair of the English corpus, in a stable order."""
    import yaml

    examples = []
    for path in sorted(chatterbot_dir().glob("*.yml")):
        conversations = yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []
        for i, turns in enumerate(conversations):
            # A conversation [q, a1, a2, ...] is the question and its answer(s), in order.
            for j in range(1, len(turns)):
                if _text(turns[j - 1]) and _text(turns[j]):
                    examples.append(Example(example_id=f"chatterbot/{path.stem}/{i}/{j}", context="",
                                            prompt=f"Question: {_text(turns[j - 1])}\nAnswer:",
                                            target=f" {_text(turns[j])}", label=path.stem))
    return tuple(examples)
