"""The ONNX Runtime training backend: artifacts, numerics against eager PyTorch, the training build.

Every numeric test trains the artifact through ``onnxruntime.training.api`` (the device
runtime, :class:`fleet.runtime_onnxruntime.OnnxRuntimeTrainer`) and the eager model the
artifact was compiled from, from the same adapter on the same real BBC News batches.
"""

from __future__ import annotations

import copy
import importlib.metadata
import subprocess
import sys

import pytest
import torch

from tests.conftest import tiny_batches, tiny_tier

ADAMW_LR = 2e-3
STEPS = 20


def _adamw_tier(**overrides):
    from models.tier import TrainingHyperparameters

    return tiny_tier(train=TrainingHyperparameters(optimizer="adamw", lr=ADAMW_LR, weight_decay=0.01),
                     **overrides)


@pytest.fixture(scope="module")
def tiny_ort_adamw(tmp_path_factory):
    from export.pipeline import export_artifact

    out = tmp_path_factory.mktemp("ort") / "adamw"
    training, manifest = export_artifact("tiny", _adamw_tier(), out, artifact_format="onnxruntime", ort_format=True)
    return out, training, manifest


def test_training_build_is_the_only_onnxruntime():
    """The training build imports, and no plain ``onnxruntime`` distribution sits beside it."""
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("onnxruntime")
    owner = importlib.metadata.distribution("onnxruntime-training-cpu")
    assert owner.version == "1.19.2"
    # In a fresh interpreter, as a device would: the training API and its C++ state are there.
    code = ("from onnxruntime.training.api import CheckpointState, Module, Optimizer; "
            "import onnxruntime; print(onnxruntime.__version__, onnxruntime.__file__)")
    printed = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    version, location = printed.split()
    assert version == "1.19.2"
    files = {str(f) for f in owner.files}
    assert any(location.endswith(name) for name in files if name.endswith("onnxruntime/__init__.py"))


def test_manifest_describes_an_onnxruntime_artifact(tiny_ort_adamw):
    out, training, manifest = tiny_ort_adamw
    assert manifest["format"] == "onnxruntime"
    program = manifest["program"]
    assert program["optimizer"] == {"optimizer": "adamw", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    assert program["runtime"]["version"] == "1.19.2"
    assert [i["name"] for i in program["inputs"]] == ["ids", "labels"]
    assert manifest["prefix"] is None
    files = manifest["files"]
    on_device = {name for name, meta in files.items() if meta["device"]}
    for name in ("training_model.onnx", "optimizer_model.onnx", "checkpoint", "training_model.ort",
                 "optimizer_model.ort", "tokenizer/tokenizer.json"):
        assert name in on_device, name
    assert not files["eval_model.onnx"]["device"]          # the server's; a phone holds one session only
    assert "model.pte" not in files and "lora.ptd" not in files
    # The LoRA tensors are named and shaped as in the ExecuTorch artifact of the same tier.
    from export.executorch import trainable_adapter_tensors

    expected = {k: list(v.shape) for k, v in trainable_adapter_tensors(training.peft_model).items()}
    assert {t["name"]: t["shape"] for t in manifest["lora"]["tensors"]} == expected


def test_checkpoint_holds_only_the_lora_weights(tiny_ort_adamw):
    from onnxruntime.training.api import CheckpointState

    out, training, manifest = tiny_ort_adamw
    state = CheckpointState.load_checkpoint(str(out / "checkpoint"))
    names = [name for name, _ in state.parameters]
    assert names and all(".lora_" in name for name in names)
    assert len(names) == len(manifest["lora"]["tensors"])


def test_adamw_matches_eager_pytorch(tiny_ort_adamw):
    """The goal: ORT's compiled AdamW and eager ``torch.optim.AdamW`` agree to 1e-4 after 20 steps."""
    from fleet.verify import max_abs_difference, train_eager, train_runtime

    out, training, _ = tiny_ort_adamw
    batches = tiny_batches(training.base.tokenizer, count=4)
    runtime_losses, runtime_adapter = train_runtime(out, batches, STEPS, ADAMW_LR, weight_decay=0.01,
                                                    optimizer="adamw")
    eager_model = copy.deepcopy(training.peft_model)
    eager_losses, eager_adapter = train_eager(eager_model, batches, STEPS, ADAMW_LR, weight_decay=0.01,
                                              optimizer="adamw")
    assert max(abs(a - b) for a, b in zip(runtime_losses, eager_losses)) <= 1e-4
    assert max_abs_difference(runtime_adapter, eager_adapter) <= 1e-4
    assert eager_losses[-1] < eager_losses[0] - 0.01                  # it learned something
    from export.executorch import trainable_adapter_tensors

    assert max_abs_difference(eager_adapter, trainable_adapter_tensors(training.peft_model)) > 1e-3


def test_int8_sgd_matches_eager_and_starts_from_the_given_adapter(tmp_path):
    """int8 frozen base + SGD; the start adapter is not the checkpoint's (a later round's)."""
    from export.pipeline import export_artifact
    from fleet.runtime_onnxruntime import OnnxRuntimeTrainer
    from fleet.verify import max_abs_difference, train_eager
    from models.tier import TrainingHyperparameters

    tier = tiny_tier(quantize="int8", train=TrainingHyperparameters(lr=0.5))
    training, manifest = export_artifact("tiny", tier, tmp_path / "int8", artifact_format="onnxruntime")
    model = training.peft_model
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    from export.executorch import trainable_adapter_tensors

    start = trainable_adapter_tensors(model)
    batches = tiny_batches(training.base.tokenizer)
    trainer = OnnxRuntimeTrainer(tmp_path / "int8", manifest, start, lr=0.5)
    assert max_abs_difference(trainer.adapter_tensors(), start) == 0.0
    runtime_losses = [trainer.step(*batches[i % 2]) for i in range(5)]
    eager_losses, eager_adapter = train_eager(model, batches, 5, 0.5)
    assert max(abs(a - b) for a, b in zip(runtime_losses, eager_losses)) <= 1e-4
    assert max_abs_difference(trainer.adapter_tensors(), eager_adapter) <= 1e-5
    assert manifest["export"]["int8_frozen_weights"] > 0


@pytest.mark.parametrize("overrides", [
    dict(prune_ratio=0.5, quantize="int8", rank_pattern="rising"),             # pruned heads and channels
    dict(prune_ratio=0.5, prune_method="layers", prefix_cache=True, lora_layers=1),  # ORT trains it whole
], ids=["width-int8-rising", "layers-prefix-tier"])
def test_other_tiers_compile_and_match_eager(tmp_path, overrides):
    """The tiers the configurators hand out compile for ONNX Runtime too (a prefix-cache tier as a whole model)."""
    from export.pipeline import export_artifact
    from fleet.verify import verify_against_eager

    training, manifest = export_artifact("tiny", tiny_tier(**overrides), tmp_path / "tier", artifact_format="onnxruntime")
    assert manifest["prefix"] is None
    result = verify_against_eager(training.peft_model, tmp_path / "tier", tiny_batches(training.base.tokenizer), 5,
                                  lr=0.5)
    assert result["max_abs_lora_diff"] <= 1e-5 and result["max_abs_loss_diff"] <= 1e-4
    assert result["max_abs_lora_change"] > 1e-3


def test_loss_does_not_train(tiny_ort_adamw):
    from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter
    from fleet.verify import max_abs_difference

    out, training, manifest = tiny_ort_adamw
    start = read_start_adapter(out / "initial_adapter" / "adapter_model.safetensors")
    trainer = OnnxRuntimeTrainer(out, manifest, start, lr=ADAMW_LR)
    batch = tiny_batches(training.base.tokenizer)[0]
    first, second = trainer.loss(*batch), trainer.loss(*batch)
    assert first == second
    assert max_abs_difference(trainer.adapter_tensors(), start) == 0.0


def test_a_foreign_adapter_is_refused(tiny_ort_adamw):
    from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter

    out, _, manifest = tiny_ort_adamw
    start = read_start_adapter(out / "initial_adapter" / "adapter_model.safetensors")
    key = sorted(start)[0]
    with pytest.raises(ValueError, match="missing"):
        OnnxRuntimeTrainer(out, manifest, {k: v for k, v in start.items() if k != key}, lr=ADAMW_LR)
    with pytest.raises(ValueError, match="shape"):
        OnnxRuntimeTrainer(out, manifest, {**start, key: start[key].t().contiguous()}, lr=ADAMW_LR)


def test_executorch_adamw_matches_eager(tiny_fp32_artifact):
    """AdamW on the ExecuTorch runtime's tensors: a job may mix runtimes under one optimizer."""
    from fleet.verify import max_abs_difference, train_eager, train_runtime

    out, training, _ = tiny_fp32_artifact
    batches = tiny_batches(training.base.tokenizer, count=4)
    runtime_losses, runtime_adapter = train_runtime(out, batches, STEPS, ADAMW_LR, weight_decay=0.01,
                                                    optimizer="adamw")
    eager_losses, eager_adapter = train_eager(copy.deepcopy(training.peft_model), batches, STEPS, ADAMW_LR,
                                              weight_decay=0.01, optimizer="adamw")
    assert max(abs(a - b) for a, b in zip(runtime_losses, eager_losses)) <= 1e-4
    assert max_abs_difference(runtime_adapter, eager_adapter) <= 1e-4


def test_sgd_with_momentum_is_refused_before_any_work(tmp_path):
    from export.pipeline import export_artifact
    from models.tier import TrainingHyperparameters

    out = tmp_path / "never"
    with pytest.raises(ValueError, match="no momentum or weight decay"):
        export_artifact("tiny", tiny_tier(train=TrainingHyperparameters(momentum=0.9)), out,
                        artifact_format="onnxruntime")
    assert not out.exists()


def test_export_cli_onnxruntime(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "pockettune", "export", "--model", "tiny", "--format", "onnxruntime",
                             "--batch", "2", "--seq", "16", "--lora-layers", "1", "--out", str(out), "--verify", "3",
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    report = json.loads(result.stdout)
    assert report["format"] == "onnxruntime" and report["max_abs_lora_diff"] <= 1e-5
    bad = subprocess.run([sys.executable, "-m", "pockettune", "export", "--model", "tiny", "--ort-format",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--ort-format applies to --format onnxruntime only" in bad.stderr


def test_runtime_says_what_to_do_without_the_training_build(monkeypatch):
    import builtins

    from fleet import runtime_onnxruntime

    real_import = builtins.__import__

    def no_training_build(name, *args, **kwargs):  # a fake environment: plain onnxruntime only
        if name.startswith("onnxruntime.training"):
            raise ImportError("cannot import name 'PropagateCastOpsStrategy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_training_build)
    with pytest.raises(runtime_onnxruntime.TrainingBuildMissing, match="onnxruntime-training-cpu==1.19.2"):
        runtime_onnxruntime.check_training_build()
