"""Scoring through the frozen prefix gives the whole model's scores, computing the bottom once."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_tier


def _tiny_peft(lora_layers: int, seed: int = 0):
    from export.pipeline import build_training_model
    from models.registry import load_base_model

    torch.manual_seed(seed)
    base = load_base_model("tiny")
    model = build_training_model(base, tiny_tier(lora_layers=lora_layers)).peft_model
    # LoRA B starts at zero; give the adapter values so a wrong cut would show in the scores.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2)
    return model.eval(), base.tokenizer


@pytest.mark.parametrize("task_name,seq", [("bbcnews", 40), ("chatterbot", 64)])
def test_scores_through_the_frozen_prefix_equal_whole_passes(task_name, seq):
    from models.frozen_prefix import FrozenPrefixModel
    from models.tasks import get_task

    model, tokenizer = _tiny_peft(lora_layers=1)
    task = get_task(task_name)
    examples = task.eval_examples(7)
    whole = task.evaluate(model, tokenizer, examples, seq=seq, batch=3)
    scorer = FrozenPrefixModel(model)
    assert scorer.first_layer == len(model.get_base_model().get_decoder().layers) - 1
    first = task.evaluate(scorer, tokenizer, examples, seq=seq, batch=3)
    rows = scorer.stats.computed        # 7 rows, or 7 x 5 (row, label) rows for multi-token labels
    assert rows in (7, 35) and scorer.stats.hits == 0
    # A new adapter (the next round): the bottom is reused, the top sees the new weights.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(-1.5)
    second = task.evaluate(scorer, tokenizer, examples, seq=seq, batch=3)
    assert scorer.stats.computed == rows and scorer.stats.hits == rows
    whole_second = task.evaluate(model, tokenizer, examples, seq=seq, batch=3)
    for cut, full in ((first, whole), (second, whole_second)):
        assert cut["value"] == pytest.approx(full["value"], rel=1e-5)
        assert cut["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert second["loss"] != pytest.approx(first["loss"], rel=1e-3), "the adapter change must show"


def test_check_measures_the_cut_and_a_trainable_bottom_is_refused():
    from models.frozen_prefix import FrozenPrefixModel

    model, _ = _tiny_peft(lora_layers=2)
    scorer = FrozenPrefixModel(model)
    assert scorer.check(torch.arange(48).reshape(2, 24) % 200) < 1e-5
    layers = model.get_base_model().get_decoder().layers
    next(layers[0].parameters()).requires_grad_(True)
    with pytest.raises(ValueError, match="not frozen"):
        FrozenPrefixModel(model)


def test_scoring_inside_a_training_cut_is_refused_not_silently_wrong():
    """Inside TopTrainingProgram.cut() the prefix layers are pass-throughs: a scorer computing its
    bottom there would cache the embeddings as if they were the prefix's output."""
    from export.program_modules import TopTrainingProgram
    from models.frozen_prefix import FrozenPrefixModel, first_trained_layer

    model, _ = _tiny_peft(lora_layers=1)
    scorer = FrozenPrefixModel(model)
    top = TopTrainingProgram(model, first_trained_layer(model), None)
    ids = torch.arange(3, 19).reshape(2, 8)
    with top.cut(), pytest.raises(RuntimeError, match="inside another cut"):
        scorer.bottom(ids)
    assert scorer.stats.computed == 0 and scorer.check(ids) == 0.0
