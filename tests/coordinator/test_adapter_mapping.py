"""Cutting the global adapter to a device's tier and lifting the device's update back.

Manifests here are written by hand (only the fields the mapping reads) so that every index
can be checked against a computation done on paper: 2 heads of head_dim 2 (4 q rows), 1 KV
head, hidden 4, reference LoRA on layers 2 and 3 at rank 4.
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.services.adapter_mapping import AdapterLayout, lift, project

PREFIX = "base_model.model.model.layers.{layer}.self_attn.{target}"


def manifest(lora: dict[tuple[int, str], tuple[int, int, int]], pruning: dict | None = None, heads: int = 2) -> dict:
    """``lora``: (pruned layer, target) -> (rank, out, in)."""
    tensors = []
    for (layer, target), (rank, out, inp) in lora.items():
        prefix = PREFIX.format(layer=layer, target=target)
        tensors += [{"name": f"{prefix}.lora_A.weight", "shape": [rank, inp]},
                    {"name": f"{prefix}.lora_B.weight", "shape": [out, rank]}]
    return {"base_model": {"hidden_size": 4},
            "pruned_model": {"num_attention_heads": heads, "head_dim": 2, "pruning": pruning or {}},
            "lora": {"tensors": tensors}}


REFERENCE = manifest({(2, "q_proj"): (4, 4, 4), (3, "q_proj"): (4, 4, 4), (3, "o_proj"): (4, 4, 4)})
# Width-pruned to head 1 of 2 (q rows 2,3; o columns 2,3), LoRA only on the last layer at rank 2.
PRUNED = manifest({(3, "q_proj"): (2, 2, 4), (3, "o_proj"): (2, 4, 2)}, heads=1, pruning={
    "method": "width", "ratio": 0.5,
    "layers": [{"layer": i, "source_layer": i, "kept_heads": [1], "kept_kv_heads": [0]} for i in range(4)]})


def reference_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for spec in REFERENCE["lora"]["tensors"]:
        out[spec["name"]] = rng.standard_normal(spec["shape"]).astype(np.float32)
    return out


def test_project_takes_the_first_ranks_and_the_kept_heads_channels():
    ref_layout, tier_layout = AdapterLayout.from_manifest(REFERENCE), AdapterLayout.from_manifest(PRUNED)
    tensors = reference_tensors()
    cut = project(tensors, ref_layout, tier_layout)
    q, o = PREFIX.format(layer=3, target="q_proj"), PREFIX.format(layer=3, target="o_proj")
    assert set(cut) == {f"{q}.lora_A.weight", f"{q}.lora_B.weight", f"{o}.lora_A.weight", f"{o}.lora_B.weight"}
    np.testing.assert_array_equal(cut[f"{q}.lora_A.weight"], tensors[f"{q}.lora_A.weight"][:2])
    np.testing.assert_array_equal(cut[f"{q}.lora_B.weight"], tensors[f"{q}.lora_B.weight"][[2, 3]][:, :2])
    np.testing.assert_array_equal(cut[f"{o}.lora_A.weight"], tensors[f"{o}.lora_A.weight"][:2][:, [2, 3]])
    np.testing.assert_array_equal(cut[f"{o}.lora_B.weight"], tensors[f"{o}.lora_B.weight"][:, :2])


def test_lift_places_the_update_and_reports_the_trained_slice():
    ref_layout, tier_layout = AdapterLayout.from_manifest(REFERENCE), AdapterLayout.from_manifest(PRUNED)
    tensors = reference_tensors()
    cut = project(tensors, ref_layout, tier_layout)
    shapes = {key: value.shape for key, value in tensors.items()}
    lifted, trained = lift(cut, tier_layout, ref_layout, shapes)
    q, o = PREFIX.format(layer=3, target="q_proj"), PREFIX.format(layer=3, target="o_proj")
    assert set(trained) == {q, o}          # layer 2 was not trained by this tier
    assert trained[q].rank == 2 and list(trained[q].rows) == [2, 3] and trained[q].cols is None
    assert trained[o].rank == 2 and trained[o].rows is None and list(trained[o].cols) == [2, 3]
    # Inside the slice: the reference values; outside: zeros.
    expected_q_b = np.zeros((4, 4), np.float32)
    expected_q_b[2:4, :2] = tensors[f"{q}.lora_B.weight"][2:4, :2]
    np.testing.assert_array_equal(lifted[f"{q}.lora_B.weight"], expected_q_b)
    expected_o_a = np.zeros((4, 4), np.float32)
    expected_o_a[:2, 2:4] = tensors[f"{o}.lora_A.weight"][:2, 2:4]
    np.testing.assert_array_equal(lifted[f"{o}.lora_A.weight"], expected_o_a)
    assert not lifted[PREFIX.format(layer=2, target="q_proj") + ".lora_A.weight"].any()


def test_layer_pruned_tier_maps_through_the_source_layer():
    # Layer 2 dropped: the pruned model's layer 2 is the original layer 3.
    dropped = manifest({(2, "q_proj"): (4, 4, 4)}, pruning={
        "method": "layers", "ratio": 0.25,
        "layers": [{"layer": 0, "source_layer": 0}, {"layer": 1, "source_layer": 1}, {"layer": 2, "source_layer": 3}]})
    cut = project(reference_tensors(), AdapterLayout.from_manifest(REFERENCE), AdapterLayout.from_manifest(dropped))
    np.testing.assert_array_equal(cut[PREFIX.format(layer=2, target="q_proj") + ".lora_B.weight"],
                                  reference_tensors()[PREFIX.format(layer=3, target="q_proj") + ".lora_B.weight"])


def test_a_tier_outside_the_reference_is_refused():
    deeper = manifest({(1, "q_proj"): (2, 4, 4)})
    with pytest.raises(ValueError, match="layer 1"):
        project(reference_tensors(), AdapterLayout.from_manifest(REFERENCE), AdapterLayout.from_manifest(deeper))
    wider = manifest({(3, "q_proj"): (8, 4, 4)})
    with pytest.raises(ValueError, match="exceeds the reference rank"):
        project(reference_tensors(), AdapterLayout.from_manifest(REFERENCE), AdapterLayout.from_manifest(wider))


def test_mlp_targets_on_a_width_pruned_tier_are_refused():
    mlp = manifest({(3, "q_proj"): (2, 2, 4)}, heads=1, pruning=PRUNED["pruned_model"]["pruning"])
    mlp["lora"]["tensors"] += [{"name": "base_model.model.model.layers.3.mlp.up_proj.lora_A.weight", "shape": [2, 4]},
                               {"name": "base_model.model.model.layers.3.mlp.up_proj.lora_B.weight", "shape": [6, 2]}]
    with pytest.raises(ValueError, match="MLP channels"):
        AdapterLayout.from_manifest(mlp)
