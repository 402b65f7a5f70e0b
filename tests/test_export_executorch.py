"""The ExecuTorch training program: runtime training matches eager SGD; the .ptd round trip."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_batches
from export.executorch import ADAPTER_DATA_FILE, PROGRAM_FILE, read_adapter_ptd, write_adapter_ptd
from export.manifest import read_manifest
from fleet.runtime_executorch import ExecuTorchTrainer
from fleet.verify import train_eager, train_runtime, verify_against_eager
from models.adapters import load_adapter, save_adapter

STEPS = 20


@pytest.mark.parametrize("artifact", ["tiny_fp32_artifact", "tiny_int8_artifact"])
def test_runtime_training_matches_eager_sgd(artifact, request):
    out, training, _ = request.getfixturevalue(artifact)
    model = copy.deepcopy(training.peft_model)  # the session fixture's model stays untrained
    batches = tiny_batches(training.base.tokenizer)
    result = verify_against_eager(model, out, batches, STEPS, lr=training.tier.train.lr)
    assert result["max_abs_lora_diff"] <= 1e-5, result
    assert result["max_abs_loss_diff"] <= 1e-4, result
    assert result["max_abs_lora_change"] > 1e-2, "LoRA weights barely moved: the comparison proves nothing"
    losses = result["runtime_loss"]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses


def test_int8_artifact_is_quantized_and_smaller(tiny_fp32_artifact, tiny_int8_artifact):
    fp32 = read_manifest(tiny_fp32_artifact[0])
    int8 = read_manifest(tiny_int8_artifact[0])
    assert int8.data["quantization"]["scheme"] == "int8"
    assert int8.files[PROGRAM_FILE]["size"] < 0.8 * fp32.files[PROGRAM_FILE]["size"]
    state = tiny_int8_artifact[1].peft_model.state_dict()
    assert any(t.dtype == torch.int8 for t in state.values())
    assert all(t.dtype == torch.float32 for k, t in state.items() if "lora_" in k or "embed_tokens" in k)


def test_peft_adapter_to_ptd_to_runtime_to_peft_adapter_is_exact(tiny_fp32_artifact, tmp_path):
    out, _, _ = tiny_fp32_artifact
    initial, config = load_adapter(out / "initial_adapter")
    assert read_adapter_ptd(out / ADAPTER_DATA_FILE).keys() == initial.keys()
    # A different adapter (random, so no two tensors are equal), as a PEFT directory.
    generator = torch.Generator().manual_seed(7)
    save_adapter({k: torch.randn(v.shape, generator=generator) for k, v in initial.items()}, config,
                 tmp_path / "peft_in")
    adapter, _ = load_adapter(tmp_path / "peft_in")
    ptd = tmp_path / "global.ptd"
    write_adapter_ptd(adapter, ptd)
    trainer = ExecuTorchTrainer(out / PROGRAM_FILE, ptd, lr=0.1)
    trainer.loss(*tiny_batches(_tokenizer(out))[0])
    save_adapter(trainer.adapter_tensors(), config, tmp_path / "peft_out")
    back, _ = load_adapter(tmp_path / "peft_out")
    assert back.keys() == adapter.keys()
    assert all(torch.equal(adapter[k], back[k]) for k in adapter)
    assert (tmp_path / "peft_in" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "peft_out" / "adapter_model.safetensors").read_bytes()


def test_zero_lora_b_tensors_are_trained_independently(tiny_fp32_artifact):
    """PEFT initializes every lora_B to zero; the runtime must not alias them into one buffer."""
    out, training, _ = tiny_fp32_artifact
    _, adapter = train_runtime(out, tiny_batches(training.base.tokenizer), 3, lr=0.5)
    q_b = [v for k, v in adapter.items() if "lora_B" in k and "q_proj" in k]
    assert len(q_b) == 2 and q_b[0].shape == q_b[1].shape
    assert q_b[0].abs().max() > 0 and q_b[1].abs().max() > 0
    assert not torch.equal(q_b[0], q_b[1])


def test_runtime_trains_from_a_shipped_global_adapter(tiny_fp32_artifact, tmp_path):
    """A new global adapter ships as a new .ptd: training starts from it, same as eager."""
    out, training, _ = tiny_fp32_artifact
    model = copy.deepcopy(training.peft_model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    from export.executorch import trainable_adapter_tensors

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / PROGRAM_FILE).symlink_to(out / PROGRAM_FILE)
    (shipped / "manifest.json").symlink_to(out / "manifest.json")
    write_adapter_ptd(trainable_adapter_tensors(model), shipped / ADAPTER_DATA_FILE)
    batches = tiny_batches(training.base.tokenizer)
    runtime_losses, runtime_adapter = train_runtime(shipped, batches, 5, lr=0.5)
    eager_losses, eager_adapter = train_eager(model, batches, 5, lr=0.5)
    assert max(abs(a - b) for a, b in zip(runtime_losses, eager_losses)) < 1e-4
    assert max((runtime_adapter[k] - eager_adapter[k]).abs().max().item() for k in eager_adapter) <= 1e-5


def _tokenizer(artifact_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(artifact_dir / "tokenizer"))
