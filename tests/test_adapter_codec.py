"""The torch-free adapter codec: key names, safetensors bytes and ExecuTorch's ``.ptd``, byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from models.adapter_codec import (peft_key, program_key, ptd_bytes, safetensors_bytes, tensors_from_ptd,
                                  tensors_from_safetensors)

KEY = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"


def _adapter(seed: int = 0, layers: int = 3) -> dict[str, np.ndarray]:
    """LoRA-shaped tensors: random A, zero B (every B equal, as at initialization)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        rank = int(rng.integers(1, 9))
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, 16)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((16, rank), dtype=np.float32)
    return tensors


def test_program_keys_round_trip_and_refuse_other_names():
    assert program_key(KEY) == "model.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight"
    assert peft_key(program_key(KEY)) == KEY
    for name in ("base_model.model.x.lora_A.weight", "model.base_model.x.lora_A.weight", "other.x.default.weight"):
        with pytest.raises(ValueError, match="not a LoRA tensor"):
            peft_key(name)


def test_safetensors_bytes_round_trip_as_peft_loads_them():
    tensors = _adapter()
    data = safetensors_bytes({key: value.astype(np.float64) for key, value in tensors.items()})
    back = tensors_from_safetensors(data)
    assert list(back) == sorted(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == np.float32 and np.array_equal(back[key], value)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}      # what PEFT and transformers look for


def test_ptd_round_trip_keeps_every_tensor_in_its_own_segment():
    tensors = _adapter(layers=4)
    data = ptd_bytes(tensors)
    back = tensors_from_ptd(data)
    assert list(back) == sorted(tensors)
    for key, value in tensors.items():
        assert back[key].shape == value.shape and np.array_equal(back[key], value)
    back[KEY.replace("layers.1", "layers.0")] += 1     # the arrays own their memory, writable
    # The zero B tensors are equal but never share bytes: the runtime trains each in place.
    zero_b = [key for key in tensors if "lora_B" in key]
    assert len(data) > sum(tensors[key].nbytes for key in zero_b)


def test_ptd_bytes_are_executorchs_own_serializer_bytes(tmp_path):
    """The codec writes without ExecuTorch; the file must still be the one ExecuTorch writes."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch.extension.flat_tensor.serialize.serialize")
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.exir.scalar_type import ScalarType
    from executorch.exir.tensor_layout import TensorLayout
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    for tensors in ({}, {KEY: np.ones((2, 3), dtype=np.float32)}, _adapter(seed=1, layers=5),
                    {"base_model.model.a.lora_A.weight": np.arange(3, dtype=np.float32),
                     "base_model.model.b.lora_B.weight": np.ones((2, 3, 5), dtype=np.float32)}):
        buffers, entries = [], {}
        for key in sorted(tensors):
            tensor = torch.from_numpy(tensors[key])
            layout = TensorLayout(scalar_type=ScalarType.FLOAT, sizes=list(tensor.shape),
                                  dim_order=list(range(tensor.dim())))
            entries[program_key(key)] = DataEntry(buffer_index=len(buffers), alignment=64, tensor_layout=layout)
            buffers.append(tensor.numpy().tobytes())
        reference = bytes(FlatTensorSerializer().serialize(DataPayload(buffers=buffers, named_data=entries)))
        assert ptd_bytes(tensors) == reference
        assert tensors_from_ptd(reference).keys() == dict(sorted(tensors.items())).keys()


def test_ptd_reader_refuses_what_is_not_a_float32_adapter():
    with pytest.raises(ValueError, match="not an ExecuTorch flat-tensor"):
        tensors_from_ptd(b"PK\x03\x04" + bytes(60))
    data = bytearray(ptd_bytes({KEY: np.ones((2, 2), dtype=np.float32)}))
    with pytest.raises(ValueError, match="damaged|not a float32|segment"):
        tensors_from_ptd(bytes(data[:200]))
    with pytest.raises(ValueError, match="expects float32"):
        ptd_bytes({KEY: np.ones((2, 2), dtype=np.int32)})


def test_codec_imports_neither_torch_nor_executorch():
    code = ("import sys, models.adapter_codec as c, numpy as np; c.tensors_from_ptd(c.ptd_bytes({'base_model.model.x."
            "lora_A.weight': np.ones(2)})); c.tensors_from_safetensors(c.safetensors_bytes({'k': np.ones(2)})); "
            "print(sorted(m for m in ('torch', 'executorch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
