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
