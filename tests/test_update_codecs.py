"""Update encodings (models/update_codecs) and the device's error feedback (fleet/update_encoding.py):
what each sends, how close it arrives, how many bytes, and what a decoder refuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from safetensors.numpy import load

from fleet.update_encoding import encode_update
from models.update_codecs import codec_names, get_codec

#: The shapes of a SmolLM2 tier's LoRA tensors at rank 8 (q and v projections of one layer).
SPECS = [{"name": "q.lora_A.weight", "shape": [8, 576]}, {"name": "q.lora_B.weight", "shape": [576, 8]},
         {"name": "v.lora_A.weight", "shape": [8, 576]}, {"name": "v.lora_B.weight", "shape": [192, 8]}]
FP32_BYTES = sum(4 * math.prod(s["shape"]) for s in SPECS)


def _change(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # rows of very different magnitude, as LoRA B rows are after a few steps
    return {s["name"]: (rng.standard_normal(s["shape"]) * rng.uniform(1e-4, 1e-2, size=(s["shape"][0], 1)))
            .astype(np.float32) for s in SPECS}


def test_every_encoding_is_registered():
    assert codec_names() == ["fp16", "fp32", "int8", "int8_tensor", "topk"]


@pytest.mark.parametrize("name, max_ratio", [("fp16", 0.5), ("int8", 0.26), ("int8_tensor", 0.2503)])
def test_quantized_changes_arrive_within_their_rounding_and_cost_a_fraction_of_fp32(name, max_ratio):
    codec = get_codec({"name": name})
    change = _change()
    arrays = codec.encode(change)
    assert {k: (v.dtype, v.shape) for k, v in arrays.items()}.keys() == codec.entries(SPECS).keys()
    decoded = codec.decode(arrays, SPECS)
    for spec in SPECS:
        key = spec["name"]
        error = np.abs(decoded[key].astype(np.float64) - change[key])
        if name == "fp16":
            # half a unit in the last place: 2^-11 relative, 2^-25 absolute below the normal range
            assert (error <= 2.0**-11 * np.abs(change[key]) + 2.0**-25).all()
        else:
            scale = arrays[key + ".scale"].astype(np.float64)
            if name == "int8":      # one scale per rank component: the shorter axis
                axis = int(np.argmin(spec["shape"]))
                assert scale.shape == (spec["shape"][axis],)
                bound = np.expand_dims(scale, 1 - axis) / 2
            else:
                bound = scale[0] / 2
            assert (error <= bound + 1e-12).all()
    assert codec.wire_bytes(SPECS) <= max_ratio * FP32_BYTES


def test_per_component_scales_keep_small_components_that_one_scale_per_tensor_flattens():
    rng = np.random.default_rng(1)
    # rank components (rows of A, columns of B) of very different magnitude
    change = {s["name"]: (rng.standard_normal(s["shape"]) * np.logspace(-5, -2, 8).reshape(
        (8, 1) if s["shape"][0] == 8 else (1, 8))).astype(np.float32) for s in SPECS}
    row_error = sum(float(np.square(get_codec({"name": "int8"}).decode(
        get_codec({"name": "int8"}).encode(change), SPECS)[k] - change[k]).sum()) for k in change)
    tensor_error = sum(float(np.square(get_codec({"name": "int8_tensor"}).decode(
        get_codec({"name": "int8_tensor"}).encode(change), SPECS)[k] - change[k]).sum()) for k in change)
    assert row_error < tensor_error / 4


def test_topk_sends_the_largest_values_and_decodes_zeros_elsewhere():
    codec = get_codec({"name": "topk", "fraction": 0.05})
    change = _change()
    arrays = codec.encode(change)
    decoded = codec.decode(arrays, SPECS)
    for spec in SPECS:
        key, numel = spec["name"], math.prod(spec["shape"])
        k = math.ceil(0.05 * numel)
        assert arrays[key + ".indices"].shape == (k,) and arrays[key + ".indices"].dtype == np.int32
        kept = np.abs(change[key]).ravel()[arrays[key + ".indices"]]
        assert kept.min() >= np.sort(np.abs(change[key]).ravel())[-k]
        assert np.count_nonzero(decoded[key]) <= k
    assert codec.wire_bytes(SPECS) <= 0.1 * FP32_BYTES + 16


def test_decoders_refuse_what_no_encoder_makes():
    codec = get_codec({"name": "topk", "fraction": 0.05})
    arrays = codec.encode(_change())
    key = SPECS[0]["name"]
    outside = dict(arrays, **{key + ".indices": np.full_like(arrays[key + ".indices"], 10**6)})
    with pytest.raises(ValueError, match="outside"):
        codec.decode(outside, SPECS)
    twice = dict(arrays, **{key + ".indices": np.zeros_like(arrays[key + ".indices"])})
    with pytest.raises(ValueError, match="twice"):
        codec.decode(twice, SPECS)
    int8 = get_codec({"name": "int8"})
    arrays = int8.encode(_change())
    with pytest.raises(ValueError, match="scales"):
        int8.decode(dict(arrays, **{key + ".scale": -arrays[key + ".scale"]}), SPECS)
    for bad in ({"name": "topk", "fraction": 0}, {"name": "topk", "fraction": "half"}, {"name": "int8", "bits": 4},
                {"name": "gzip"}):
        with pytest.raises(ValueError):
            get_codec(bad)


def test_error_feedback_delays_what_topk_leaves_out_but_loses_nothing(tmp_path):
    """Over several tasks, what arrived plus the residual kept on the device is exactly the sum of
    the changes the device made: top-k only delays."""
    codec = get_codec({"name": "topk", "fraction": 0.1})
    residual_path = tmp_path / "residual.safetensors"
    start = {s["name"]: np.zeros(s["shape"], dtype=np.float32) for s in SPECS}
    made = {k: np.zeros(v.shape) for k, v in start.items()}
    arrived = {k: np.zeros(v.shape) for k, v in start.items()}
    for task in range(4):
        change = _change(task)
        trained = {k: start[k] + change[k] for k in start}
        sent = codec.decode(load(encode_update(trained, start, codec, residual_path)), SPECS)
        for k in start:
            made[k] += change[k].astype(np.float64)
            arrived[k] += sent[k]
    residual = load(residual_path.read_bytes())
    for k in start:
        np.testing.assert_allclose(arrived[k] + residual[k], made[k], atol=1e-6)
    # a task of another tier (other shapes) starts without the residual
    other = [{"name": "q.lora_A.weight", "shape": [4, 576]}]
    small = {"q.lora_A.weight": np.zeros((4, 576), dtype=np.float32)}
    trained = {"q.lora_A.weight": small["q.lora_A.weight"] + 1e-3}
    sent = codec.decode(load(encode_update(trained, small, codec, residual_path)), other)
    assert np.count_nonzero(sent["q.lora_A.weight"]) == math.ceil(0.1 * 4 * 576)


def test_an_int8_change_on_the_wire_is_at_most_a_quarter_of_the_fp32_upload(tmp_path):
    """What a device sends (fleet/device.py): the int8 file gzip-compressed, against the fp32 file
    of the trained values; gzip's entropy coding pays for the scales and the longer header."""
    import gzip

    from safetensors.numpy import save

    rng = np.random.default_rng(3)
    start = {s["name"]: rng.standard_normal(s["shape"]).astype(np.float32) * 0.02 for s in SPECS}
    trained = {k: (v + rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in start.items()}
    fp32_file = save(trained, metadata={"format": "pt"})
    int8_file = encode_update(trained, start, get_codec({"name": "int8"}), None)
    on_the_wire = gzip.compress(int8_file, compresslevel=9, mtime=0)
    assert len(int8_file) > 0.25 * len(fp32_file)        # the raw file alone is a little over
    assert len(on_the_wire) <= 0.25 * len(fp32_file), len(on_the_wire) / len(fp32_file)
