"""Cutting the global adapter to a device's tier and lifting the device's update back.

Manifests here are written by hand (only the fields the mapping reads) so that every index
can be checked against a computation done on paper: 2 heads of head_dim 2 (4 q rows), 1 KV
head, hidden 4, reference LoRA on layers 2 and 3 at rank 4. Width-pruned references use a
4-head model with grouped KV heads, described where it starts; the last tests are the unpruned
shape behind a pruned reference and a placement that skips an unmappable tier.
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


# --- width-pruned references --------------------------------------------------------------------
#
# An unpruned model of 4 query heads sharing 2 KV heads (KV head 0 serves query heads 0 and 1,
# KV head 1 serves 2 and 3), head_dim 2, hidden 8: q_proj output channel of head h, element j
# is 2h + j, k_proj/v_proj output channel of KV head g is 2g + j, o_proj input channels are
# q_proj's. A width-pruned artifact's tensors hold only its kept heads' channels, in order, so
# a tier's channel must be looked up among the reference's: its position there is the row of
# the reference tensor. LoRA sits on all four attention projections of layers 2 and 3 of the
# reference (rank 4) and of layer 3 of the tier (rank 2).

HEAD_DIM, HIDDEN, HEADS, KV_HEADS = 2, 8, 4, 2
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def attention_manifest(kept_heads: list[int] | None, kept_kv_heads: list[int] | None, rank: int,
                       layers: tuple[int, ...]) -> dict:
    """A manifest of the 4-head model above (None: unpruned), LoRA at ``rank`` on ``layers``."""
    heads = HEADS if kept_heads is None else len(kept_heads)
    kv_heads = KV_HEADS if kept_kv_heads is None else len(kept_kv_heads)
    q, kv = heads * HEAD_DIM, kv_heads * HEAD_DIM
    features = {"q_proj": (q, HIDDEN), "k_proj": (kv, HIDDEN), "v_proj": (kv, HIDDEN), "o_proj": (HIDDEN, q)}
    tensors = []
    for layer in layers:
        for target in TARGETS:
            prefix, (out, inp) = PREFIX.format(layer=layer, target=target), features[target]
            tensors += [{"name": f"{prefix}.lora_A.weight", "shape": [rank, inp]},
                        {"name": f"{prefix}.lora_B.weight", "shape": [out, rank]}]
    pruning = {} if kept_heads is None else {
        "method": "width", "ratio": 0.25,
        "layers": [{"layer": i, "source_layer": i, "kept_heads": kept_heads, "kept_kv_heads": kept_kv_heads}
                   for i in range(4)]}
    return {"base_model": {"hidden_size": HIDDEN},
            "pruned_model": {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": HEAD_DIM,
                             "pruning": pruning},
            "lora": {"tensors": tensors}}


def random_tensors(manifest_: dict, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {spec["name"]: rng.standard_normal(spec["shape"]).astype(np.float32)
            for spec in manifest_["lora"]["tensors"]}


# (reference heads, reference KV heads, tier heads, tier KV heads, then the hand-computed
# positions in the reference tensors: q_proj B rows = o_proj A columns, k_proj/v_proj B rows).
WIDTH_CASES = {
    # Today's case: unpruned reference, so positions are the channels. Tier heads 2, 3 (KV 1).
    "unpruned-ref/0.5-tier": (None, None, [2, 3], [1], [4, 5, 6, 7], [2, 3]),
    # 0.25-like reference (3 of 4 heads: channels 0,1 | 4,5 | 6,7) and a 0.5-like subset (heads
    # 2, 3 = channels 4..7 at positions 2..5; KV 1 = channels 2, 3 at positions 2, 3). The
    # unpruned channels 6, 7 are past the reference's 6 q rows.
    "0.25-ref/0.5-tier": ([0, 2, 3], [0, 1], [2, 3], [1], [2, 3, 4, 5], [2, 3]),
    # Kept heads not the first ones: the reference keeps heads 1, 3 (channels 2,3 | 6,7), the
    # tier head 1 (channels 2, 3 at positions 0, 1; KV 0 at positions 0, 1). Read as unpruned
    # indices, rows 2, 3 would silently be head 3's.
    "ref-heads-1,3/tier-head-1": ([1, 3], [0, 1], [1], [0], [0, 1], [0, 1]),
    # GQA with the reference's KV heads pruned too: reference heads 2, 3 on KV head 1 (q channels
    # 4..7, k/v channels 2, 3), tier head 3 (q channels 6, 7 at positions 2, 3) on KV head 1
    # (k/v channels 2, 3 at positions 0, 1).
    "0.5-ref-kv1/tier-head-3": ([2, 3], [1], [3], [1], [2, 3], [0, 1]),
    # The tier keeps exactly the reference's heads (another artifact: lower rank, one layer).
    "tier-equal-to-ref": ([0, 2, 3], [0, 1], [0, 2, 3], [0, 1], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3]),
    # A reference pruned so lightly that it keeps every head, and an unpruned tier.
    "all-heads-ref/unpruned-tier": ([0, 1, 2, 3], [0, 1], None, None, [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3]),
}


@pytest.fixture(params=list(WIDTH_CASES), ids=list(WIDTH_CASES))
def width_case(request):
    ref_heads, ref_kv, tier_heads, tier_kv, q_positions, kv_positions = WIDTH_CASES[request.param]
    reference = attention_manifest(ref_heads, ref_kv, rank=4, layers=(2, 3))
    tier = attention_manifest(tier_heads, tier_kv, rank=2, layers=(3,))
    return reference, tier, {"q_proj": q_positions, "k_proj": kv_positions, "v_proj": kv_positions,
                             "o_proj": q_positions}


def test_project_picks_the_tier_heads_rows_of_a_pruned_reference(width_case):
    reference, tier, positions = width_case
    tensors = random_tensors(reference)
    cut = project(tensors, AdapterLayout.from_manifest(reference), AdapterLayout.from_manifest(tier))
    assert set(cut) == {spec["name"] for spec in tier["lora"]["tensors"]}
    shapes = {spec["name"]: tuple(spec["shape"]) for spec in tier["lora"]["tensors"]}
    for target in TARGETS:
        key = PREFIX.format(layer=3, target=target)
        a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
        got_a, got_b = cut[f"{key}.lora_A.weight"], cut[f"{key}.lora_B.weight"]
        assert got_a.shape == shapes[f"{key}.lora_A.weight"] and got_b.shape == shapes[f"{key}.lora_B.weight"]
        for k in range(2):                          # element by element: the first 2 components
            if target == "o_proj":                  # channels are A's columns; B (hidden rows) is whole
                for i, p in enumerate(positions[target]):
                    assert got_a[k, i] == a[k, p]
                assert np.array_equal(got_b[:, k], b[:, k])
            else:                                   # channels are B's rows; A (hidden columns) is whole
                for i, p in enumerate(positions[target]):
                    assert got_b[i, k] == b[p, k]
                assert np.array_equal(got_a[k], a[k])


def _listed(indices, size: int) -> list[int]:
    """A TrainedPart's rows or columns as a list (None: all ``size``)."""
    return list(range(size)) if indices is None else [int(i) for i in indices]


def test_lift_puts_the_update_at_the_reference_positions(width_case):
    reference, tier, positions = width_case
    ref_layout, tier_layout = AdapterLayout.from_manifest(reference), AdapterLayout.from_manifest(tier)
    update = random_tensors(tier, seed=2)
    shapes = {spec["name"]: tuple(spec["shape"]) for spec in reference["lora"]["tensors"]}
    lifted, trained = lift(update, tier_layout, ref_layout, shapes)
    assert set(trained) == {PREFIX.format(layer=3, target=t) for t in TARGETS}
    for target in TARGETS:
        key = PREFIX.format(layer=3, target=target)
        part = trained[key]
        a_ref, b_ref = lifted[f"{key}.lora_A.weight"], lifted[f"{key}.lora_B.weight"]
        a_dev, b_dev = update[f"{key}.lora_A.weight"], update[f"{key}.lora_B.weight"]
        assert part.rank == 2
        expected_a, expected_b = np.zeros(shapes[f"{key}.lora_A.weight"]), np.zeros(shapes[f"{key}.lora_B.weight"])
        if target == "o_proj":
            assert part.rows is None and _listed(part.cols, shapes[f"{key}.lora_A.weight"][1]) == positions[target]
            for i, p in enumerate(positions[target]):
                expected_a[:2, p] = a_dev[:, i]
            expected_b[:, :2] = b_dev
        else:
            assert part.cols is None and _listed(part.rows, shapes[f"{key}.lora_B.weight"][0]) == positions[target]
            for i, p in enumerate(positions[target]):
                expected_b[p, :2] = b_dev[i]
            expected_a[:2] = a_dev
        np.testing.assert_array_equal(a_ref, expected_a)
        np.testing.assert_array_equal(b_ref, expected_b)
    for target in TARGETS:                          # layer 2 is not the tier's
        assert not lifted[PREFIX.format(layer=2, target=target) + ".lora_B.weight"].any()


def test_lift_of_project_is_the_reference_on_the_covered_slice(width_case):
    from coordinator.strategies.base import ClientUpdate, coverage_by_key

    reference, tier, _ = width_case
    ref_layout, tier_layout = AdapterLayout.from_manifest(reference), AdapterLayout.from_manifest(tier)
    tensors = random_tensors(reference)
    shapes = {key: value.shape for key, value in tensors.items()}
    lifted, trained = lift(project(tensors, ref_layout, tier_layout), tier_layout, ref_layout, shapes)
    # The coverage a strategy reads from ``trained`` is exactly where the round trip is non-zero.
    covered = coverage_by_key(ClientUpdate(lifted, 1, trained=trained), tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(lifted[key], np.where(covered[key], value, 0.0))
    q_b = PREFIX.format(layer=3, target="q_proj") + ".lora_B.weight"
    rows = _listed(trained[PREFIX.format(layer=3, target="q_proj")].rows, tensors[q_b].shape[0])
    assert covered[q_b].sum() == len(rows) * 2     # its rows, first 2 components


def test_fedavg_averages_a_pruned_tier_into_the_heads_it_trained():
    from coordinator.strategies import ClientUpdate, get_strategy

    # Reference heads 1, 3 (q rows: channels 2,3 then 6,7); the tier trains head 3 = reference
    # rows 2, 3 at rank 2, and votes 1.0 there against the reference device's 0.0.
    reference = attention_manifest([1, 3], [0, 1], rank=4, layers=(3,))
    tier = attention_manifest([3], [1], rank=2, layers=(3,))
    zeros = {key: np.zeros_like(value) for key, value in random_tensors(reference).items()}
    ones = {key: np.ones_like(value) for key, value in random_tensors(tier).items()}
    lifted, trained = lift(ones, AdapterLayout.from_manifest(tier), AdapterLayout.from_manifest(reference),
                           {key: value.shape for key, value in zeros.items()})
    out = get_strategy("fedavg").aggregate_train(zeros, [ClientUpdate(zeros, 1), ClientUpdate(lifted, 1,
                                                                                               trained=trained)])
    q_b = out[PREFIX.format(layer=3, target="q_proj") + ".lora_B.weight"]
    expected = np.zeros((4, 4))
    expected[2:4, :2] = 0.5                         # head 3's rows, first 2 components: (0 + 1) / 2
    np.testing.assert_array_equal(q_b, expected)


def test_a_tier_keeping_a_head_the_reference_pruned_is_refused():
    reference = AdapterLayout.from_manifest(attention_manifest([0, 2, 3], [0, 1], rank=4, layers=(2, 3)))
    tensors = random_tensors(attention_manifest([0, 2, 3], [0, 1], rank=4, layers=(2, 3)))
    for tier in (attention_manifest([1, 3], [0, 1], rank=2, layers=(3,)),   # head 1 is not the reference's
                 attention_manifest(None, None, rank=2, layers=(3,))):        # nor is it in the unpruned tier
        tier_layout = AdapterLayout.from_manifest(tier)
        with pytest.raises(ValueError, match=r"head\(s\) \[1\]"):
            project(tensors, reference, tier_layout)
        with pytest.raises(ValueError, match=r"head\(s\) \[1\]"):
            lift(random_tensors(tier), tier_layout, reference, {k: v.shape for k, v in tensors.items()})
    # KV heads: a reference on KV head 1 only cannot take a tier on KV head 0.
    kv_reference = AdapterLayout.from_manifest(attention_manifest([2, 3], [1], rank=4, layers=(3,)))
    with pytest.raises(ValueError, match=r"head\(s\) \[0\].*k_proj"):
        project(random_tensors(attention_manifest([2, 3], [1], rank=4, layers=(3,))), kv_reference,
                AdapterLayout.from_manifest(attention_manifest([3], [0], rank=2, layers=(3,))))


# --- the unpruned shape behind a pruned reference ----------------------------------------------

def shape_manifest(base_extra: dict, pruning: dict) -> dict:
    """SmolLM2-135M's numbers, pruned at 0.25 (3 groups of 2 heads, 1152 of 1536 MLP channels)."""
    return {"base_model": {"id": "smollm2-135m", "num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49152,
                           **base_extra},
            "pruned_model": {"num_hidden_layers": 30, "num_attention_heads": 6, "num_key_value_heads": 3,
                             "intermediate_size": 1152, "head_dim": 64, "pruning": pruning}}


UNPRUNED_WIDTH = {"intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}


def test_model_shape_of_a_width_pruned_reference_is_the_unpruned_model():
    from coordinator.services.tiers import model_shape

    shape = model_shape(shape_manifest(UNPRUNED_WIDTH, {"method": "width", "ratio": 0.25}))
    assert shape == {"num_hidden_layers": 30, "hidden_size": 576, "vocab_size": 49152, **UNPRUNED_WIDTH}


def test_model_shape_of_an_older_manifest():
    from coordinator.services.tiers import model_shape

    # Without the unpruned width in base_model: an unpruned or layer-pruned artifact's width is the original one.
    for pruning in ({}, {"method": "width", "ratio": 0.0}, {"method": "layers", "ratio": 0.25}):
        older = shape_manifest({}, pruning)
        assert model_shape(older)["num_attention_heads"] == 6 and model_shape(older)["intermediate_size"] == 1152
    # A width-pruned one cannot say what it was pruned from.
    with pytest.raises(ValueError, match="width-pruned.*export it again"):
        model_shape(shape_manifest({}, {"method": "width", "ratio": 0.25}))


# --- placement: an unmappable tier is skipped, not a server error ------------------------------

def test_place_device_skips_a_tier_the_reference_cannot_hold(monkeypatch):
    from contextlib import nullcontext
    from types import SimpleNamespace

    from coordinator.scheduling import configurator as configurators
    from coordinator.scheduling.configurator import TierChoice
    from coordinator.services import tiers

    reference = attention_manifest([0, 2, 3], [0, 1], rank=4, layers=(2, 3))
    tensors = random_tensors(reference)
    artifacts = {1: reference,                                                      # the job's
                 2: attention_manifest([1, 3], [0, 1], rank=2, layers=(3,)),        # head 1: not the reference's
                 3: attention_manifest([2, 3], [1], rank=2, layers=(3,))}           # fits
    job = SimpleNamespace(id=7, artifact_id=1, configurator="fedspine", configurator_options=None,
                          tier={"name": "reference"})
    choices = [TierChoice(tier={"name": "p-bad"}, local_steps=5, arm="bad"),
               TierChoice(tier={"name": "p-good"}, local_steps=5, arm="good")]
    monkeypatch.setattr(configurators, "get_configurator",
                        lambda *_: SimpleNamespace(choose=lambda view, device: choices, prunes_from_tuned_model=False))
    monkeypatch.setattr(tiers, "job_view", lambda *_args, **_kw: None)
    monkeypatch.setattr(tiers, "device_history", lambda *_: ())
    monkeypatch.setattr(tiers, "artifact_for_device",
                        lambda state, job, device, tier: ({"p-bad": 2, "p-good": 3}[tier["name"]], []))
    monkeypatch.setattr(tiers, "ineligibility", lambda *_: None)

    def cut(state, job, round_number, artifact_id, choice):  # the real cut, minus the blob store
        project(tensors, AdapterLayout.from_manifest(artifacts[job.artifact_id]),
                AdapterLayout.from_manifest(artifacts[artifact_id]))
        return tiers.Placement(arm=choice.arm, tier=choice.tier, local_steps=choice.local_steps,
                               artifact_id=artifact_id)

    monkeypatch.setattr(tiers, "_cut_start_adapter", cut)
    state = SimpleNamespace(db=SimpleNamespace(read=nullcontext))
    placement, why = tiers.place_device(state, job, SimpleNamespace(id=1, capabilities={}), 1)
    assert placement.arm == "good" and placement.artifact_id == 3 and why == ""
    choices.pop()                                   # only the unmappable tier is left
    placement, why = tiers.place_device(state, job, SimpleNamespace(id=1, capabilities={}), 1)
    assert placement is None and "bad: the tier keeps attention head(s) [1]" in why
