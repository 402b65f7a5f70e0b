"""Artifact formats and device runtimes as plug-ins: one list of names, each question answered by the plug-in."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from export.formats import DEFAULT_FORMAT, FORMATS, UnknownFormatError, get_format
from fleet.runtimes import get_runtime, runtime_names
from models.adapter_codec import tensors_from_ptd, tensors_from_safetensors


def test_one_list_of_formats_each_with_its_runtime():
    from fleet.device import RUNTIMES

    assert FORMATS == ("executorch", "onnxruntime") and DEFAULT_FORMAT in FORMATS
    assert runtime_names() == FORMATS == RUNTIMES
    for name in FORMATS:
        assert get_format(name).name == get_runtime(name).name == name
        stages = get_format(name).stages
        assert stages[0] == "load" and stages[-1] == "manifest" and len(set(stages)) == len(stages)
    with pytest.raises(UnknownFormatError, match="known: executorch, onnxruntime"):
        get_format("litert")
    with pytest.raises(ValueError):     # callers that catch ValueError keep working
        get_format("litert")


def test_only_onnxruntime_compiles_its_optimizer():
    from models.tier import Tier, TrainingHyperparameters

    momentum = Tier(train=TrainingHyperparameters(momentum=0.9)).to_dict()
    adamw = Tier(train=TrainingHyperparameters(optimizer="adamw", weight_decay=0.01)).to_dict()
    executorch, onnxruntime = get_format("executorch"), get_format("onnxruntime")
    assert executorch.unsupported(momentum) is None and executorch.artifact_key_extras(adamw) == {}
    assert "no momentum or weight decay" in onnxruntime.unsupported(momentum)
    assert onnxruntime.unsupported(adamw) is None
    assert onnxruntime.artifact_key_extras(adamw) == {"optimizer": {"optimizer": "adamw", "betas": [0.9, 0.999],
                                                                    "eps": 1e-8, "weight_decay": 0.01}}
    manifest = {"program": {"optimizer": {"optimizer": "adamw"}}}
    assert get_runtime("onnxruntime").settings_mismatch(manifest, {"optimizer": "adamw"}) is None
    assert "compiled 'adamw'" in get_runtime("onnxruntime").settings_mismatch(manifest, {})
    assert get_runtime("executorch").settings_mismatch(manifest, {"optimizer": "sgd"}) is None


def test_start_adapters_are_encoded_as_each_runtime_loads_them():
    tensors = {"base_model.model.x.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    decoders = {"ptd": tensors_from_ptd, "safetensors": tensors_from_safetensors}
    for name in FORMATS:
        export_format = get_format(name)
        back = decoders[export_format.start_adapter_kind](export_format.encode_start_adapter(tensors))
        assert np.array_equal(back["base_model.model.x.lora_A.weight"], tensors["base_model.model.x.lora_A.weight"])
    assert get_format("executorch").start_adapter_kind == "ptd"
    assert get_format("onnxruntime").start_adapter_kind == "safetensors"


def test_program_kinds_are_the_virtual_clocks():
    from fleet.calibrate import kind_export_options
    from fleet.virtual_clock import PROGRAM_KINDS

    kinds = {kind: name for name in FORMATS for kind in get_format(name).program_kinds()}
    assert sorted(kinds) == sorted(PROGRAM_KINDS)
    assert kind_export_options("executorch-portable-int8") == ["--format", "executorch", "--kernels", "portable",
                                                               "--quantize", "int8"]
    assert kind_export_options("onnxruntime-fp32") == ["--format", "onnxruntime", "--quantize", "none"]


def test_the_ram_estimate_counts_device_files_only():
    manifest = {"files": {"model.pte": {"size": 100 * 2**20, "device": True},
                          "pruned_base/model.safetensors": {"size": 900 * 2**20, "device": False}}}
    assert {get_format(name).required_ram_mb(manifest) for name in FORMATS} == {339}


def test_registries_load_no_engine():
    """The coordinator asks formats on its request path: the plug-ins import their compilers and
    engines only when they build or train."""
    code = ("import sys, export.formats, fleet.runtimes, fleet.virtual_clock; "
            "print(sorted(m for m in ('torch', 'executorch', 'onnx', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
