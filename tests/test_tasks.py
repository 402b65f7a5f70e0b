"""Tasks: text format, label-only loss, evaluation metrics, and reproducible partitions."""

from __future__ import annotations

import math

import pytest
import torch

from models.batching import IGNORE_INDEX


@pytest.fixture(scope="module")
def tiny():
    from models.registry import load_base_model

    return load_base_model("tiny")


def test_bbcnews_encoding_puts_loss_on_the_label_word_only(tiny):
    from models.tasks import get_task

    task = get_task("bbcnews")
    example = task.examples("train")[0]
    ids, labels = task.encode(tiny.tokenizer, example, 48)
    assert ids.shape == labels.shape == (48,)
    target = tiny.tokenizer(example.target, add_special_tokens=False)["input_ids"]
    scored = labels[labels != IGNORE_INDEX].tolist()
    assert scored == target                                   # exactly the label's tokens carry loss
    end = (labels != IGNORE_INDEX).nonzero().max().item() + 1
    prompt = tiny.tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    assert ids[end - len(target) - len(prompt): end - len(target)].tolist() == prompt   # the cue is never cut
    assert tiny.tokenizer.decode(ids[:5]) == example.context[:5]                        # the article's start is kept


def test_splits_are_disjoint_and_eval_subset_is_balanced_and_fixed():
    from models.tasks import get_task

    task = get_task("bbcnews")
    train_ids = {e.example_id for e in task.examples("train")}
    held_ids = {e.example_id for e in task.examples("heldout")}
    assert train_ids and held_ids and not train_ids & held_ids
    subset = task.eval_examples(50)
    assert subset == task.eval_examples(50)
    counts = {label: sum(e.label == label for e in subset) for label in task.labels}
    assert set(counts.values()) == {10}


@pytest.mark.parametrize("name", ["bbcnews", "chatterbot"])
def test_train_and_heldout_share_no_content_and_hold_no_duplicates(name):
    """No text (whitespace-collapsed, case-folded) is both trained on and held out, and none twice."""
    from models.splitting import normalized
    from models.tasks import get_task, task_names

    assert set(task_names()) == {"bbcnews", "chatterbot"}, "a new built-in task needs its place here"
    task = get_task(name)
    seen = {}
    for split in ("train", "heldout"):
        texts = [normalized(e.context + e.prompt + e.target) for e in task.examples(split)]
        assert texts and len(set(texts)) == len(texts), f"{name} {split} holds duplicates"
        seen[split] = set(texts)
    assert not seen["train"] & seen["heldout"]
    # The article (or the question) alone does not cross either: a relabelled copy cannot leak.
    parts = {split: {normalized(e.context or e.prompt) for e in task.examples(split)} for split in seen}
    assert not parts["train"] & parts["heldout"]
    summary = task.split_summary()
    assert summary["heldout"]["examples"] == len(seen["heldout"])
    assert all(summary[split]["duplicates_dropped"] >= 0 for split in summary)


def test_content_split_keeps_identical_texts_on_one_side_and_collapses_them():
    from models.splitting import content_key, content_split, normalized, split_of_key

    texts = ["An article.", "an   ARTICLE.", "Another one.", "An article."] + [f"text {i}" for i in range(200)]
    sides = {split: content_split(texts, split, text_of=str) for split in ("train", "calibration", "heldout")}
    kept = [t for side in sides.values() for t in side.items]
    assert len(kept) == len({normalized(t) for t in texts})                # every distinct text once
    assert sum(side.duplicates_dropped for side in sides.values()) == 2
    home = split_of_key(content_key("An article."))
    assert "An article." in sides[home].items and sides[home].duplicates_dropped == 2
    shares = {split: len(side.items) / len(kept) for split, side in sides.items()}
    assert 0.7 < shares["train"] < 0.9 and 0.08 < shares["heldout"] < 0.25


def test_label_likelihood_accuracy_matches_a_longhand_computation(tiny):
    """Multi-token labels (the tiny byte tokenizer): scores are sums of per-token log-probs."""
    from models.tasks import get_task

    task = get_task("bbcnews")
    examples = task.eval_examples(5)
    result = task.evaluate(tiny.model, tiny.tokenizer, examples, seq=32, batch=3)
    longest = max(len(tiny.tokenizer(f" {l}", add_special_tokens=False)["input_ids"]) for l in task.labels)
    correct, nll = 0, 0.0
    with torch.no_grad():
        for example in examples:
            row = task.prompt_ids(tiny.tokenizer, example, 32, reserve=longest)
            scores = []
            for label in task.labels:
                label_ids = tiny.tokenizer(f" {label}", add_special_tokens=False)["input_ids"]
                logits = tiny.model(torch.tensor([row + label_ids])).logits[0].log_softmax(-1)
                scores.append(sum(logits[len(row) - 1 + i, t].item() for i, t in enumerate(label_ids)))
            truth = task.labels.index(example.label)
            correct += max(range(5), key=scores.__getitem__) == truth
            nll -= scores[truth]
    assert result["num_examples"] == 5
    assert result["value"] == pytest.approx(correct / 5)
    assert result["loss"] == pytest.approx(nll / 5, rel=1e-4)
    # The Wilson interval, by its formula: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n).
    z, n, p = 1.959963984540054, 5, correct / 5
    centre, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert result["ci95"] == pytest.approx([(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)])


def test_chatterbot_perplexity_is_exp_of_answer_loss(tiny):
    from export.executorch import LanguageModelLoss
    from models.tasks import get_task

    task = get_task("chatterbot")
    # Short pairs (the byte tokenizer spends a token per character) so each answer fits whole.
    examples = [e for e in task.eval_examples() if len(e.prompt) + len(e.target) < 90][:4]
    assert all(e.prompt.startswith("Question: ") and e.prompt.endswith("\nAnswer:") for e in examples)
    result = task.evaluate(tiny.model, tiny.tokenizer, examples, seq=96, batch=4)
    ids, labels = (torch.stack(t) for t in zip(*(task.encode(tiny.tokenizer, e, 96) for e in examples)))
    assert ((labels == tiny.tokenizer.eos_token_id).sum(dim=1) == 1).all(), "each answer ends with end-of-sequence"
    with torch.no_grad():
        loss = LanguageModelLoss(tiny.model)(ids, labels).item()   # the training program's loss
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["value"] == pytest.approx(math.exp(loss), rel=1e-5)
    low, high = result["ci95"]
    assert low <= result["value"] <= high and low > 0


def test_perplexity_interval_resamples_whole_examples_and_narrows_with_more_of_them():
    import numpy as np

    from models.intervals import perplexity_interval

    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 30, size=400)
    nll = tokens * rng.normal(2.0, 0.5, size=400).clip(0.1)
    point = math.exp(nll.sum() / tokens.sum())
    wide, narrow = perplexity_interval(nll[:40], tokens[:40]), perplexity_interval(nll, tokens)
    assert narrow[0] < point < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert perplexity_interval(nll, tokens) == narrow                      # seeded: reproducible


def test_partitions_are_reproducible_disjoint_and_dirichlet_is_skewed():
    from models.tasks import PartitionSpec, get_task, partition

    labels = [e.label for e in get_task("bbcnews").examples("train")]
    iid = partition(labels, 10, PartitionSpec.parse("iid", seed=1))
    skewed = partition(labels, 10, PartitionSpec.parse("dirichlet:0.5", seed=1))
    assert skewed == partition(labels, 10, PartitionSpec.parse("dirichlet:0.5", seed=1))
    assert skewed != partition(labels, 10, PartitionSpec.parse("dirichlet:0.5", seed=2))
    for parts in (iid, skewed):
        flat = [i for part in parts for i in part]
        assert sorted(flat) == list(range(len(labels)))

    def dominant_share(parts):
        shares = []
        for part in parts:
            counts = {}
            for i in part:
                counts[labels[i]] = counts.get(labels[i], 0) + 1
            shares.append(max(counts.values()) / len(part))
        return sum(shares) / len(shares)

    assert dominant_share(iid) < 0.35 < 0.5 < dominant_share(skewed)


@pytest.mark.parametrize("text", ["dirichlet:0", "dirichlet:x", "zipf", "iid:3"])
def test_bad_partition_specs_are_refused(text):
    from models.tasks import PartitionSpec

    with pytest.raises(ValueError):
        PartitionSpec.parse(text)


def test_unknown_task_names_the_known_ones():
    from models.tasks import UnknownTaskError, get_task

    with pytest.raises(UnknownTaskError, match="bbcnews, chatterbot"):
        get_task("imdb")


def test_text_file_task(tmp_path):
    from models.tasks import TextFileTask

    path = tmp_path / "notes.txt"
    path.write_text("first note\nstill first\n\nsecond note\n\n\n")
    task = TextFileTask(path)
    assert [e.target for e in task.examples("train")] == ["first note\nstill first", "second note"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no text"):
        TextFileTask(tmp_path / "empty.txt")


def test_bbcnews_states_its_labelled_positions_and_its_examples_keep_to_them(tiny, tmp_path):
    """``max_labelled_positions`` is what the coordinator checks a label-position tier against
    (``tier.loss_positions``): it must bound every encoded example as trainers count labels."""
    from models.batching import labelled_positions_per_row
    from models.tasks import TextFileTask, get_task

    task = get_task("bbcnews")
    examples = task.examples("train")
    assert {e.target for e in examples} == set(task.targets)      # the stated targets are the real ones
    longest = task.max_labelled_positions(tiny.tokenizer, 32)
    assert longest == len(" entertainment")                        # byte tokens; one SmolLM2 token each
    mixed = [e for label in task.labels for e in examples if e.label == label][::25]
    assert {e.label for e in mixed} == set(task.labels)
    counts = labelled_positions_per_row(torch.stack([task.encode(tiny.tokenizer, e, 32)[1] for e in mixed]))
    assert int(counts.max()) == longest                             # a tight bound, not merely a safe one
    assert task.max_labelled_positions(tiny.tokenizer, 8) == 7     # no row labels more than seq - 1

    # Free-text tasks have no bound short of the whole row.
    assert get_task("chatterbot").max_labelled_positions(tiny.tokenizer, 32) is None
    (tmp_path / "notes.txt").write_text("a note")
    assert TextFileTask(tmp_path / "notes.txt").max_labelled_positions(tiny.tokenizer, 32) is None
