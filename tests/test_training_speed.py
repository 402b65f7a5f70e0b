"""Issue 5's program changes: the exported loss, XNNPACK lowering, no needless gradients, prefix caching.

Speed itself is measured by ``bench/train_step.py``, never asserted here; these tests pin
down that the faster programs compute exactly what the slow ones (and eager PyTorch) do.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY_BATCH, TINY_SEQ, tiny_batches, tiny_tier
from export.executorch import ADAPTER_DATA_FILE, PREFIX_PROGRAM_FILE, PROGRAM_FILE, LanguageModelLoss
from export.manifest import read_manifest
from export.program_modules import PrefixProgram, TopTrainingProgram, TrainingProgram
from fleet.prefix_cache import PrefixCache
from fleet.runtime_executorch import ExecuTorchTrainer
from fleet.verify import train_runtime, verify_against_eager
from models.batching import IGNORE_INDEX


@pytest.fixture()
def trained_looking_tiny():
    """A tiny PEFT model whose LoRA B weights are non-zero (at init they are zero, hiding LoRA bugs)."""
    from export.pipeline import build_training_model
    from models.registry import load_base_model

    training = build_training_model(load_base_model("tiny"), tiny_tier())
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in training.peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return training


def _padded_batch(tokenizer):
    ids, labels = tiny_batches(tokenizer, count=1)[0]
    labels = labels.clone()
    labels[0, TINY_SEQ // 2:] = IGNORE_INDEX        # a short example: half of it is padding
    return ids, labels


def test_exported_loss_is_cross_entropy(trained_looking_tiny):
    model = trained_looking_tiny.peft_model
    ids, labels = _padded_batch(trained_looking_tiny.base.tokenizer)
    reference = LanguageModelLoss(model)(ids, labels)
    exported = TrainingProgram(model)(ids, labels)
    assert abs(reference.item() - exported.item()) < 1e-5
    # ...and its gradient, which is what training uses.
    grads = []
    for module in (LanguageModelLoss(model), TrainingProgram(model)):
        model.zero_grad(set_to_none=True)
        module(ids, labels).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0]) < 1e-5


def test_prefix_and_top_compose_to_the_whole_model(trained_looking_tiny):
    model, first = trained_looking_tiny.peft_model, trained_looking_tiny.layout.first_layer
    ids, labels = _padded_batch(trained_looking_tiny.base.tokenizer)
    prefix, top = PrefixProgram(model, first), TopTrainingProgram(model, first)
    with prefix.cut():
        hidden = prefix(ids)
    with top.cut():
        split = top(hidden, labels)
    assert hidden.shape == (TINY_BATCH, TINY_SEQ, model.config.hidden_size)
    assert abs(float(split.detach()) - float(TrainingProgram(model)(ids, labels).detach())) < 1e-5
    with pytest.raises(RuntimeError, match="cut"):
        prefix(ids)        # outside its cut the module would run the whole decoder


def test_xnnpack_program_has_no_per_step_transposes_of_frozen_weights(tiny_fp32_artifact):
    manifest = read_manifest(tiny_fp32_artifact[0]).data
    export = manifest["export"]
    assert manifest["program"]["kernels"] == "xnnpack"
    assert export["delegate_calls"] > 0
    passes = export["graph_passes"]
    # 4 layers x 7 projections + the LM head reach the forward as linear(x, W) of the stored W.
    assert passes["frozen_matmuls_to_linear"] == 4 * 7 + 1
    assert passes["double_transposes_folded"] > 0


def test_no_gradient_flows_below_the_lowest_lora_layer(tiny_fp32_artifact):
    manifest = read_manifest(tiny_fp32_artifact[0]).data
    layout = manifest["lora"]["layout"]
    backward = manifest["export"]["graph_passes"]["backward_frozen_weights"]
    depth = manifest["pruned_model"]["num_hidden_layers"]
    assert layout["first_layer"] == 2 and depth == 4
    # The backward multiplies by frozen weights of the LoRA layers and the head only...
    assert sorted(int(layer) for layer in backward["layers"]) == list(range(layout["first_layer"], depth))
    assert backward["other"] == ["model.base_model.model.lm_head.weight"]
    # ...every projection of the upper LoRA layer (its input gradient feeds the layer below)...
    everything = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert backward["layers"]["3"] == everything
    # ...but in the lowest one only what leads to its LoRA branches: no gradient goes through
    # the frozen q/k/v projections into a layer that trains nothing.
    assert backward["layers"]["2"] == ["down_proj", "gate_proj", "o_proj", "up_proj"]


def test_program_returns_gradients_for_lora_tensors_only(tiny_fp32_artifact):
    from executorch.extension.pybindings.portable_lib import _load_for_executorch

    out = tiny_fp32_artifact[0]
    manifest = read_manifest(out).data
    program = _load_for_executorch(str(out / PROGRAM_FILE), data_path=str(out / ADAPTER_DATA_FILE))
    fqns = program.run_method("__et_training_fqn_forward", ())
    assert fqns and all(".lora_A." in name or ".lora_B." in name for name in fqns)
    assert len(fqns) == len(manifest["lora"]["tensors"])


def test_portable_and_xnnpack_programs_train_alike(tiny_fp32_artifact, tmp_path):
    from export.pipeline import export_artifact

    portable_dir = tmp_path / "portable"
    export_artifact("tiny", tiny_tier(kernels="portable"), portable_dir)
    assert read_manifest(portable_dir).data["export"]["delegate_calls"] == 0
    batches = tiny_batches(tiny_fp32_artifact[1].base.tokenizer)
    xnn_losses, xnn_adapter = train_runtime(tiny_fp32_artifact[0], batches, 5, lr=0.5)
    portable_losses, portable_adapter = train_runtime(portable_dir, batches, 5, lr=0.5)
    assert max(abs(a - b) for a, b in zip(xnn_losses, portable_losses)) < 1e-5
    assert max((xnn_adapter[k] - portable_adapter[k]).abs().max().item() for k in xnn_adapter) < 1e-6


# --- frozen-prefix caching ------------------------------------------------------------------

def test_prefix_artifact_ships_a_prefix_program_and_a_top_program(tiny_prefix_artifact):
    out, training, _ = tiny_prefix_artifact
    manifest = read_manifest(out).data
    assert manifest["prefix"]["first_trained_layer"] == training.layout.first_layer == 2
    assert manifest["files"][PREFIX_PROGRAM_FILE]["device"] is True
    assert [i["name"] for i in manifest["program"]["inputs"]] == ["hidden", "labels"]
    assert manifest["program"]["inputs"][0]["shape"] == [TINY_BATCH, TINY_SEQ, training.peft_model.config.hidden_size]
    assert manifest["prefix"]["cache_bytes_per_example"] == TINY_SEQ * training.peft_model.config.hidden_size * 4


def test_prefix_cached_training_matches_eager(tiny_prefix_artifact):
    out, training, _ = tiny_prefix_artifact
    model = copy.deepcopy(training.peft_model)
    result = verify_against_eager(model, out, tiny_batches(training.base.tokenizer), 20, lr=training.tier.train.lr)
    assert result["max_abs_lora_diff"] <= 1e-5, result
    assert result["max_abs_loss_diff"] <= 1e-4, result
    assert result["max_abs_lora_change"] > 1e-2


def test_prefix_cache_computes_each_example_once(tiny_prefix_artifact, tmp_path):
    out, training, _ = tiny_prefix_artifact
    manifest = read_manifest(out).data
    batches = tiny_batches(training.base.tokenizer, count=2)
    trainer = ExecuTorchTrainer.for_artifact(out, manifest, out / ADAPTER_DATA_FILE, lr=0.5, cache_dir=tmp_path)
    trainer.prepare(batches)
    assert trainer.prefix.stats.computed == 2 * TINY_BATCH
    for _ in range(3):                                  # three epochs
        for ids, labels in batches:
            trainer.step(ids, labels)
    assert trainer.prefix.stats.computed == 2 * TINY_BATCH     # never recomputed
    assert trainer.prefix.stats.hits == 3 * 2 * TINY_BATCH
    # The cached rows are the prefix program's output for exactly these ids.
    prefix = PrefixProgram(training.peft_model, training.layout.first_layer)
    with prefix.cut():
        expected = prefix(batches[1][0])
    assert (trainer.prefix.hidden(batches[1][0]) - expected).abs().max() < 1e-5


def test_prefix_cache_spills_to_disk_past_its_memory_budget(tiny_prefix_artifact, tmp_path):
    out, training, _ = tiny_prefix_artifact
    manifest = read_manifest(out).data
    ids = tiny_batches(training.base.tokenizer, count=1)[0][0]
    in_memory = PrefixCache.for_artifact(out, manifest, cache_dir=None).hidden(ids)
    on_disk = PrefixCache.for_artifact(out, manifest, cache_dir=tmp_path, memory_bytes=0)
    assert torch.equal(on_disk.hidden(ids), in_memory)
    assert on_disk.stats.memory_bytes == 0 and on_disk.stats.disk_bytes > 0
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == TINY_BATCH
    # A later session (a new round) finds them without running the prefix program.
    later = PrefixCache.for_artifact(out, manifest, cache_dir=tmp_path, memory_bytes=0)
    assert torch.equal(later.hidden(ids), in_memory) and later.stats.computed == 0
    # Another base model (another prefix program) never reads them.
    other = PrefixCache(out / PREFIX_PROGRAM_FILE, "f" * 64, cache_dir=tmp_path, memory_bytes=0)
    assert ids[0] not in other


def test_pruned_int8_prefix_cached_artifact_trains_like_eager(tmp_path):
    """Width pruning makes the attention output narrower than the hidden size, which the prefix
    (inference) program's lowering once failed on; int8 keeps its matmuls off XNNPACK."""
    from export.pipeline import export_artifact

    out = tmp_path / "pruned-int8-prefix"
    training, _ = export_artifact("tiny", tiny_tier(prune_ratio=0.5, quantize="int8", prefix_cache=True), out)
    result = verify_against_eager(training.peft_model, out, tiny_batches(training.base.tokenizer), 5, lr=0.5)
    assert result["max_abs_lora_diff"] <= 1e-5, result
    assert result["max_abs_lora_change"] > 1e-3


def test_prefix_cache_refused_when_every_layer_has_lora():
    with pytest.raises(ValueError, match="prefix"):
        tiny_tier(prefix_cache=True, lora_layers=4).validate(num_hidden_layers=4)

