"""export/server_model.py: the eager model rebuilt from an artifact computes the program's loss.

The coordinator evaluates global adapters on this rebuilt model, so it must be the model
the ExecuTorch program was compiled from: same loss on the same batch (to float32 rounding),
with the artifact's initial adapter and with any other adapter loaded into both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_batches, tiny_tier

TOLERANCE = 1e-5


def _perturbed(tensors: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The adapter plus a seeded change, so that lora_B is non-zero and LoRA changes the loss."""
    generator = torch.Generator().manual_seed(seed)
    return {key: value + 0.05 * torch.randn(value.shape, generator=generator) for key, value in tensors.items()}


def _assert_same_loss_as_program(artifact_dir, tmp_path):
    from export.executorch import LanguageModelLoss, write_adapter_ptd
    from export.server_model import adapter_parameters, load_artifact_model, set_adapter_tensors
    from fleet.runtime_executorch import ExecuTorchTrainer
    from models.adapters import load_adapter

    rebuilt = load_artifact_model(artifact_dir)
    assert not rebuilt.peft_model.training
    initial, _ = load_adapter(artifact_dir / "initial_adapter")
    assert set(adapter_parameters(rebuilt.peft_model)) == set(initial)
    adapter = _perturbed(initial, seed=3)
    ptd = tmp_path / "perturbed.ptd"
    write_adapter_ptd(adapter, ptd)
    cases = [("initial", artifact_dir / "lora.ptd", initial), ("perturbed", ptd, adapter)]
    batches = tiny_batches(rebuilt.tokenizer)
    for name, ptd_path, tensors in cases:
        set_adapter_tensors(rebuilt.peft_model, {k: v.numpy() for k, v in tensors.items()})
        program = ExecuTorchTrainer(artifact_dir / "model.pte", ptd_path, lr=0.1)
        for ids, labels in batches:
            with torch.no_grad():
                eager = float(LanguageModelLoss(rebuilt.peft_model)(ids, labels))
            runtime = program.loss(ids, labels)
            assert abs(eager - runtime) <= TOLERANCE, (name, eager, runtime)
    return rebuilt


def test_rebuilt_fp32_model_has_the_programs_loss(tiny_fp32_artifact, tmp_path):
    out_dir, _, _ = tiny_fp32_artifact
    rebuilt = _assert_same_loss_as_program(out_dir, tmp_path)
    assert rebuilt.tier.quantize == "none"


def test_rebuilt_int8_model_has_the_programs_loss(tiny_int8_artifact, tmp_path):
    out_dir, _, _ = tiny_int8_artifact
    rebuilt = _assert_same_loss_as_program(out_dir, tmp_path)
    assert rebuilt.tier.quantize == "int8"


def test_rebuilt_pruned_model_comes_from_pruned_base(tmp_path):
    """A width-pruned tier: the base is the artifact's pruned_base/, not the named model."""
    from export.pipeline import export_artifact

    out_dir = tmp_path / "pruned"
    _, manifest = export_artifact("tiny", tiny_tier(prune_ratio=0.5, kernels="portable"), out_dir)
    assert (out_dir / "pruned_base" / "config.json").is_file()
    rebuilt = _assert_same_loss_as_program(out_dir, tmp_path)
    config = rebuilt.peft_model.get_base_model().config
    assert config.intermediate_size == manifest["pruned_model"]["intermediate_size"] < 176


def test_pruned_artifact_without_pruned_base_is_refused(tmp_path):
    from export.pipeline import export_artifact
    from export.server_model import load_artifact_model

    out_dir = tmp_path / "pruned"
    export_artifact("tiny", tiny_tier(prune_ratio=0.5, prune_method="layers", kernels="portable"), out_dir,
                    save_pruned_base=False)
    with pytest.raises(FileNotFoundError, match="pruned_base"):
        load_artifact_model(out_dir)


def test_set_adapter_tensors_names_missing_extra_and_misshapen_keys(tiny_fp32_artifact):
    from export.server_model import adapter_parameters, load_artifact_model, set_adapter_tensors

    out_dir, _, _ = tiny_fp32_artifact
    model = load_artifact_model(out_dir).peft_model
    params = adapter_parameters(model)
    good = {key: np.full(tuple(p.shape), 0.25, dtype=np.float32) for key, p in params.items()}
    first, second = sorted(good)[:2]
    before = {key: p.detach().clone() for key, p in params.items()}

    for bad, snippet in [
        ({k: v for k, v in good.items() if k != first}, f"missing 1 tensor(s): {first}"),
        ({**good, "base_model.model.extra.lora_A.weight": good[first]}, "unexpected 1 tensor(s)"),
        ({**good, second: good[second][:-1]}, f"{second} has shape"),
    ]:
        with pytest.raises(ValueError, match="adapter tensors do not fit") as caught:
            set_adapter_tensors(model, bad)
        assert snippet in str(caught.value)
        for key, p in params.items():  # a refused adapter changes nothing
            assert torch.equal(p.detach(), before[key])

    set_adapter_tensors(model, good)
    assert all(torch.all(p.detach() == 0.25) for p in params.values())
