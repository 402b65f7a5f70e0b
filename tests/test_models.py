"""Registry, LoRA layout, tier validation, quantization and batching on the tiny preset."""

from __future__ import annotations

import pytest
import torch

from models.batching import IGNORE_INDEX, encode_example, make_batches
from models.lora import apply_lora, rank_schedule, resolve_layout
from models.quantize import quantize_frozen_base
from models.registry import UnknownModelError, load_base_model, state_dict_sha256
from models.tier import Tier, TrainingHyperparameters, parse_rank_pattern


def test_tiny_is_seeded_small_and_tokenizes_bytes():
    a, b = load_base_model("tiny"), load_base_model("tiny")
    assert a.content_sha256 == b.content_sha256
    n_params = sum(p.numel() for p in a.model.parameters())
    assert 50_000 < n_params < 2_000_000  # "a few MB" at fp32
    text = "Héllo, wörld!"
    ids = a.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert a.tokenizer.decode(ids) == text


def test_content_hash_sees_a_single_changed_weight():
    base = load_base_model("tiny")
    before = state_dict_sha256(base.model)
    with torch.no_grad():
        base.model.model.norm.weight[0] += 1e-3
    assert state_dict_sha256(base.model) != before


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(UnknownModelError, match="tiny, smollm2-135m"):
        load_base_model("gpt-17")


def test_local_hf_directory_loads(tmp_path):
    base = load_base_model("tiny")
    base.model.save_pretrained(tmp_path)
    base.tokenizer.save_pretrained(tmp_path)
    again = load_base_model(str(tmp_path))
    assert again.content_sha256 == base.content_sha256


@pytest.mark.parametrize("pattern, expected", [
    ("uniform", (8, 8, 8, 8)),
    ("rising", (2, 4, 6, 8)),
    ((1, 2, 3, 4), (1, 2, 3, 4)),
])
def test_rank_schedule(pattern, expected):
    assert rank_schedule(8, 4, pattern) == expected


def test_layout_puts_lora_only_in_the_last_layers_with_per_layer_ranks():
    base = load_base_model("tiny")
    layout = resolve_layout(4, 8, 3, "rising")
    model = apply_lora(base.model, layout)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    layers = {int(n.split("layers.")[1].split(".")[0]) for n in trainable}
    assert layers == {1, 2, 3}
    a_ranks = {int(n.split("layers.")[1].split(".")[0]): p.shape[0]
               for n, p in trainable.items() if "q_proj.lora_A" in n}
    assert a_ranks == {1: 2, 2: 5, 3: 8}
    scales = {m.scaling["default"] for m in model.modules() if isinstance(getattr(m, "scaling", None), dict) and m.scaling}
    assert scales == {layout.scale}  # alpha / r constant across ranks


def test_lora_initialization_is_reproducible():
    def adapter():
        model = apply_lora(load_base_model("tiny").model, resolve_layout(4, 4, 2))
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    first, second = adapter(), adapter()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("fields, message", [
    (dict(prune_ratio=0.91), "pruning ratio"),
    (dict(lora_rank=0), "LoRA rank"),
    (dict(lora_layers=0), "LoRA layers"),
    (dict(quantize="int4"), "quantization"),
    (dict(batch=0), "batch"),
    (dict(seq=1), "sequence length"),
    (dict(lora_targets=("qkv",)), "target modules"),
    (dict(loss_positions=0), r"loss positions must be an integer in \[1, 127\]"),
    (dict(loss_positions=128), r"loss positions must be an integer in \[1, 127\]"),
    (dict(seq=16, loss_positions=16), r"\[1, 15\]"),
    (dict(loss_positions=True), "loss positions"),
    (dict(loss_positions=2.0), "loss positions"),
])
def test_tier_validation(fields, message):
    with pytest.raises(ValueError, match=message):
        Tier(**fields).validate()


def test_tier_round_trips_through_dict():
    tier = Tier(prune_ratio=0.25, rank_pattern=parse_rank_pattern("2,4"), lora_layers=2, quantize="int8")
    assert Tier.from_dict(tier.to_dict()) == tier
    label = Tier(loss_positions=127)
    label.validate()
    assert label.to_dict()["loss_positions"] == 127 and Tier.from_dict(label.to_dict()) == label
    assert "loss_positions" not in tier.to_dict()        # unset: the dict (and artifact key) of older tiers
    assert not {"lr_schedule", "lr_min"} & set(tier.to_dict()["train"])   # likewise a constant rate
    cosine = Tier(train=TrainingHyperparameters(lr=0.1, lr_schedule="cosine", lr_min=0.2))
    cosine.validate()
    assert cosine.to_dict()["train"]["lr_schedule"] == "cosine" and Tier.from_dict(cosine.to_dict()) == cosine
    assert "local_sampling" not in tier.to_dict()["train"]                 # the default walk, likewise
    balanced = Tier(train=TrainingHyperparameters(local_sampling="class_balanced"))
    balanced.validate()
    assert balanced.to_dict()["train"]["local_sampling"] == "class_balanced"
    assert Tier.from_dict(balanced.to_dict()) == balanced
    for bad in ("shuffled", None, 1):
        with pytest.raises(ValueError, match="local sampling"):
            TrainingHyperparameters(local_sampling=bad).validate()


def test_learning_rate_schedules_across_rounds():
    constant = TrainingHyperparameters(lr=0.1)
    assert [constant.lr_for_round(r, 5) for r in range(1, 6)] == [0.1] * 5
    cosine = TrainingHyperparameters(lr=0.1, lr_schedule="cosine", lr_min=0.0)
    rates = [cosine.lr_for_round(r, 4) for r in range(1, 5)]
    # round 1 at the full rate, half-way at half of it, the last still above the floor
    assert rates[0] == 0.1 and rates[2] == pytest.approx(0.05) and 0 < rates[3] < rates[2] < rates[1] < 0.1
    assert cosine.lr_for_round(1, 1) == 0.1                  # a one-round job trains at lr
    for bad, message in (({"lr_schedule": "step"}, "learning-rate schedule"), ({"lr_min": 2.0}, "lr_min"),
                         ({"lr_min": float("nan")}, "lr_min"), ({"lr_schedule": None}, "learning-rate schedule")):
        with pytest.raises(ValueError, match=message):
            TrainingHyperparameters(**{"lr_schedule": "cosine", **bad}).validate()


def test_int8_quantizes_only_frozen_base_linears_and_stays_close():
    base = load_base_model("tiny")
    reference = apply_lora(load_base_model("tiny").model, resolve_layout(4, 4, 2))
    model = apply_lora(base.model, resolve_layout(4, 4, 2))
    count = quantize_frozen_base(model, "int8")
    assert count == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers; never lm_head or LoRA
    state = model.state_dict()
    assert state["base_model.model.lm_head.weight"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for k, v in state.items() if "lora_" in k)
    ids = torch.arange(64).reshape(2, 32) + 3
    with torch.no_grad():
        q = model(input_ids=ids).logits
        f = reference(input_ids=ids).logits
    assert (q - f).abs().max() < 0.05 * f.abs().max()
    assert not torch.equal(q, f)


def test_batches_pad_with_ignored_labels():
    tok = load_base_model("tiny").tokenizer
    ids, labels = encode_example(tok, "abc", 8)
    assert ids.tolist()[:3] == labels.tolist()[:3]
    assert labels.tolist()[3:] == [IGNORE_INDEX] * 5
    batches = make_batches(tok, ["one", "two", "three"], 2, 8)
    assert len(batches) == 1 and batches[0][0].shape == (2, 8)
