"""HetLoRA's rank self-pruning (models/rank_pruning.py): the penalty's step against autograd, the
pruning decision, the zeroed tail, the rank the coordinator reads back, and the settings check;
then the penalty on the real ExecuTorch runtime (tiny artifact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.rank_pruning import RankSelfPruning, effective_rank

A = "base_model.model.model.layers.{}.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.{}.self_attn.q_proj.lora_B.weight"


def adapter(ranks=(8,), seed=0, scale=0.1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer, rank in enumerate(ranks):
        tensors[A.format(layer)] = torch.randn(rank, 12, generator=generator) * scale
        tensors[B.format(layer)] = torch.randn(10, rank, generator=generator) * scale
    return tensors


def test_the_penalty_step_is_a_gradient_step_of_the_tail_product_norm():
    pruning = RankSelfPruning(strength=2.0, keep=0.5)
    tensors = adapter()
    lr = 1e-3
    a, b = tensors[A.format(0)].clone().requires_grad_(), tensors[B.format(0)].clone().requires_grad_()
    penalty = pruning.strength * torch.linalg.matrix_norm(b[:, 4:] @ a[4:, :])
    penalty.backward()
    changed = pruning.penalty_step(tensors, lr)
    torch.testing.assert_close(changed[A.format(0)], tensors[A.format(0)] - lr * a.grad)
    torch.testing.assert_close(changed[B.format(0)], tensors[B.format(0)] - lr * b.grad)
    assert torch.equal(changed[A.format(0)][:4], tensors[A.format(0)][:4])     # the kept ranks are untouched
    assert pruning.tail_norm(changed) < pruning.tail_norm(tensors)


def test_a_huge_penalty_step_shrinks_the_tail_to_zero_instead_of_past_it():
    pruning = RankSelfPruning(strength=1e3, keep=0.5)
    tensors = adapter()
    changed = pruning.penalty_step(tensors, 1.0)
    assert pruning.tail_norm(changed) <= pruning.tail_norm(tensors)


def test_a_device_prunes_when_its_tail_shrank_over_the_round_and_uploads_zeros_there():
    pruning = RankSelfPruning(strength=1.0, keep=0.5, min_rank=1)
    start = adapter()
    grown = {k: v * 1.5 for k, v in start.items()}
    shrunk = {k: v * 0.5 for k, v in start.items()}
    assert not pruning.decide(start, grown)
    assert pruning.decide(start, shrunk)
    # round 1: B starts at zero, so the start's tail is zero and nothing can have shrunk
    fresh = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in start.items()}
    assert not pruning.decide(fresh, grown)
    pruned = pruning.pruned(shrunk)
    assert effective_rank(shrunk) == 8 and effective_rank(pruned) == 4
    assert effective_rank({k: v.numpy() for k, v in pruned.items()}) == 4     # numpy, as the coordinator has it
    assert torch.equal(pruned[A.format(0)][:4], shrunk[A.format(0)][:4])


def test_modules_of_other_ranks_keep_their_own_share_and_min_rank_is_a_floor():
    pruning = RankSelfPruning(strength=1.0, keep=0.5, min_rank=2)
    assert [pruning.kept_rank(r) for r in (1, 2, 3, 4, 8, 16)] == [1, 2, 2, 2, 4, 8]
    pruned = pruning.pruned(adapter(ranks=(2, 8)))
    assert effective_rank({k: v for k, v in pruned.items() if ".0." in k}) == 2    # at min_rank: kept whole
    assert effective_rank({k: v for k, v in pruned.items() if ".1." in k}) == 4
    assert effective_rank({k: np.zeros_like(v.numpy()) for k, v in pruned.items()}) == 0


def test_an_adapter_of_mismatched_factors_has_no_rank():
    with pytest.raises(ValueError, match="not LoRA factors"):
        effective_rank({A.format(0): np.zeros((4, 3)), B.format(0): np.zeros((5, 2))})


@pytest.mark.parametrize("settings, message", [
    ({"strength": 0, "keep": 0.5}, "strength"),
    ({"strength": float("nan"), "keep": 0.5}, "strength"),
    ({"strength": 1.0, "keep": 1.0}, "keep"),
    ({"strength": 1.0, "keep": True}, "keep"),
    ({"strength": 1.0, "keep": 0.5, "min_rank": 0}, "min_rank"),
    ({"strength": 1.0}, "strength, keep"),
    ({"strength": 1.0, "keep": 0.5, "gamma": 2}, "strength, keep"),
    ("yes", "must be an object"),
])
def test_a_device_refuses_malformed_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        RankSelfPruning.from_train({"rank_self_pruning": settings})


def test_settings_round_trip_and_absence_means_none():
    assert RankSelfPruning.from_train({"lr": 0.1}) is None
    pruning = RankSelfPruning(strength=10.0, keep=0.5, min_rank=1)
    assert RankSelfPruning.from_train({"rank_self_pruning": pruning.to_dict()}) == pruning


def test_the_penalty_shrinks_the_tail_on_the_executorch_runtime(tiny_fp32_artifact, tmp_path):
    """The device's loop (step, penalty step, write back) on the real runtime: with the penalty the
    tail ends smaller than without it; the decision follows."""
    from conftest import tiny_batches
    from export.executorch import PROGRAM_FILE, write_adapter_ptd
    from fleet.runtime_executorch import ExecuTorchTrainer
    from models.adapters import load_adapter

    out, training, _ = tiny_fp32_artifact
    initial, _ = load_adapter(out / "initial_adapter")
    generator = torch.Generator().manual_seed(1)
    # a start adapter as a later round has it: lora_B trained away from zero
    start = {k: (torch.randn(v.shape, generator=generator) * 0.05 if "lora_B" in k else v.clone())
             for k, v in initial.items()}
    write_adapter_ptd(start, tmp_path / "start.ptd")
    batches = tiny_batches(training.base.tokenizer, count=4)
    pruning, lr = RankSelfPruning(strength=5.0, keep=0.5), 0.5

    def train(penalty: bool) -> dict[str, torch.Tensor]:
        trainer = ExecuTorchTrainer(out / PROGRAM_FILE, tmp_path / "start.ptd", lr=lr)
        for ids, labels in batches:
            trainer.step(ids, labels)
            if penalty:
                current = trainer.adapter_tensors()
                trainer.load_adapter({**current, **pruning.penalty_step(current, lr)})
        return trainer.adapter_tensors()

    plain, penalised = train(False), train(True)
    assert pruning.tail_norm(penalised) < 0.5 * pruning.tail_norm(plain)
    assert pruning.decide(start, penalised) and not pruning.decide(start, plain)
    with pytest.raises(ValueError, match="does not fit"):
        trainer = ExecuTorchTrainer(out / PROGRAM_FILE, tmp_path / "start.ptd", lr=lr)
        trainer.step(*batches[0])
        trainer.load_adapter({A.format(99): torch.zeros(4, 4)})
