"""Pruning chosen on the tuned model (FedSpine's iterative prune-and-tune), on the tiny preset.

The tuned model is the base with a LoRA adapter merged (``models.lora.merged_copy``); its
activations choose what pruning keeps, while the kept weights stay the base's, so devices at a
pruned tier keep training an adapter over the same base as everyone else.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_tier


def _tuned_adapter(seed: int = 0, scale: float = 0.5):
    """A LoRA adapter on the tiny model's last 2 layers (q and v), with large random B (as if tuned)."""
    from export.executorch import trainable_adapter_tensors
    from models.lora import apply_lora, resolve_layout
    from models.registry import load_base_model

    base = load_base_model("tiny")
    peft_model = apply_lora(base.model, resolve_layout(base.config.num_hidden_layers, 4, 2, "uniform"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(scale * torch.randn(param.shape, generator=generator))
    return peft_model, {k: v.detach().clone() for k, v in trainable_adapter_tensors(peft_model).items()}


def test_merged_copy_computes_what_the_adapter_model_computes_and_leaves_the_base_alone():
    from models.lora import merged_copy
    from models.registry import load_base_model

    peft_model, adapter = _tuned_adapter()
    base = load_base_model("tiny").model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = merged_copy(base, adapter)
    ids = torch.randint(0, base.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), float((got - expected).abs().max())
    assert not torch.allclose(plain, expected, atol=1e-3)
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())


def test_merged_copy_refuses_adapters_that_do_not_fit():
    from models.lora import merged_copy
    from models.registry import load_base_model

    _, adapter = _tuned_adapter()
    base = load_base_model("tiny").model
    a_key = next(k for k in adapter if "lora_A" in k)
    with pytest.raises(ValueError, match="has only"):
        merged_copy(base, {a_key: adapter[a_key]})
    with pytest.raises(ValueError, match="do not fit"):
        merged_copy(base, {**adapter, a_key: adapter[a_key][:, :-1]})
    with pytest.raises(ValueError, match="not a LoRA tensor"):
        merged_copy(base, {"model.layers.0.self_attn.q_proj.weight": adapter[a_key]})
    moved = {k.replace("layers.3.", "layers.9."): v for k, v in adapter.items()}
    with pytest.raises(ValueError, match="not a linear layer"):
        merged_copy(base, moved)


def test_pruning_follows_the_tuned_model_but_keeps_the_base_weights():
    from models.lora import merged_copy
    from models.pruning import PruningConfig, calibration_ids, prune_model
    from models.registry import load_base_model

    _, adapter = _tuned_adapter(scale=2.0)
    base = load_base_model("tiny")
    calibration = calibration_ids(base.tokenizer, n_sequences=8, seq_len=32)
    config = PruningConfig(ratio=0.5, method="width")
    tuned = merged_copy(base.model, adapter)
    original_v = [layer.self_attn.v_proj.weight.detach().clone() for layer in base.model.model.layers]
    tuned_v = [layer.self_attn.v_proj.weight.detach().clone() for layer in tuned.model.layers]

    untuned_report = prune_model(load_base_model("tiny").model, config, calibration)
    on_tuned_itself = prune_model(merged_copy(base.model, adapter), config, calibration)
    report = prune_model(base.model, config, calibration, importance_model=tuned)

    kept = lambda r: [(layer["kept_heads"], layer["kept_kv_heads"]) for layer in r["layers"]]  # noqa: E731
    assert kept(report) == kept(on_tuned_itself)          # the tuned model chose what stays ...
    assert kept(report) != kept(untuned_report)           # ... and chose differently from the base
    head_dim = base.model.config.head_dim
    for layer, entry, base_v, merged_v in zip(base.model.model.layers, report["layers"], original_v, tuned_v):
        rows = torch.cat([torch.arange(kv * head_dim, (kv + 1) * head_dim) for kv in entry["kept_kv_heads"]])
        assert torch.equal(layer.self_attn.v_proj.weight, base_v[rows])   # ... but the weights are the base's
    changed = [i for i, (b, m) in enumerate(zip(original_v, tuned_v)) if not torch.equal(b, m)]
    assert changed == [2, 3]                                  # (the adapter's layers: merged weights differ there)


def test_importance_model_must_have_the_pruned_models_shape():
    from models.pruning import PruningConfig, prune_model
    from models.registry import load_base_model

    small = load_base_model("tiny").model
    prune_model(small, PruningConfig(ratio=0.5))
    with pytest.raises(ValueError, match="differs from the pruned model"):
        prune_model(load_base_model("tiny").model, PruningConfig(ratio=0.5), importance_model=small)


def test_tier_names_its_importance_adapter_only_with_a_pruning_ratio():
    from models.tier import Tier

    sha = "ab" * 32
    tier = tiny_tier(prune_ratio=0.5, prune_importance_adapter=sha)
    tier.validate()
    assert Tier.from_dict(tier.to_dict()) == tier and tier.to_dict()["prune_importance_adapter"] == sha
    assert "prune_importance_adapter" not in tiny_tier(prune_ratio=0.5).to_dict()   # old keys unchanged
    with pytest.raises(ValueError, match="needs a prune_ratio"):
        tiny_tier(prune_importance_adapter=sha).validate()
    for bad in ("AB" * 32, "ab" * 31, 7):
        with pytest.raises(ValueError, match="sha256"):
            tiny_tier(prune_ratio=0.5, prune_importance_adapter=bad).validate()


def test_export_prunes_by_the_named_adapter_and_records_it(tmp_path):
    from export.pipeline import export_artifact
    from models.pruning import calibration_ids, prune_model
    from models.registry import load_base_model

    _, adapter = _tuned_adapter(scale=2.0)
    sha = "cd" * 32
    tier = tiny_tier(prune_ratio=0.5, kernels="portable", prune_importance_adapter=sha)
    with pytest.raises(ValueError, match="none was given"):
        export_artifact("tiny", tier, tmp_path / "missing")
    with pytest.raises(ValueError, match="does not name one"):
        export_artifact("tiny", dataclasses.replace(tier, prune_importance_adapter=None), tmp_path / "extra",
                        importance_adapter=adapter)
    _, manifest = export_artifact("tiny", tier, tmp_path / "tuned", importance_adapter=adapter)
    base = load_base_model("tiny")
    untuned = prune_model(base.model, tier.pruning, calibration_ids(base.tokenizer))   # what the export would cut
    pruning = manifest["pruned_model"]["pruning"]
    assert pruning["importance_adapter"] == sha and manifest["tier"]["prune_importance_adapter"] == sha
    assert [layer["kept_heads"] for layer in pruning["layers"]] != [layer["kept_heads"] for layer in untuned["layers"]]
