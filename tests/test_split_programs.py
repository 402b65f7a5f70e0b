"""The device's bottom programs for split learning, against eager PyTorch on the tiny model.

The bottom (layers below the cut, with their LoRA) is compiled to two ExecuTorch programs and
run by the real runtime (``fleet/split_bottom.py``); the top trains in eager PyTorch
(``coordinator/split/top.py``). A split step must be the whole model's step: the same loss, the
same gradient for every LoRA weight on both sides, the same weights after an SGD update.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_lora_everywhere as lora_everywhere
from export.program_modules import PrefixProgram, TrainingProgram, causal_lm_of
from export.split_programs import check_split_layer, export_split_programs
from fleet.split_bottom import SplitBottomTrainer
from models.adapter_codec import peft_key
from coordinator.split.top import SplitTop

SPLIT_LAYER = 2
BATCH, SEQ = 2, 16
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def batch(vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=generator)
    labels = ids.clone()
    labels[:, :3] = -100
    return ids, labels


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    peft = lora_everywhere()
    out = tmp_path_factory.mktemp("split")
    report = export_split_programs(peft, SPLIT_LAYER, BATCH, SEQ, out, kernels="portable")
    return peft, out, report


def eager_whole_step(peft, ids, labels) -> tuple[float, dict[str, torch.Tensor]]:
    """The whole model's loss and every LoRA gradient (PEFT keys), eagerly."""
    peft.zero_grad(set_to_none=True)
    loss = TrainingProgram(peft)(ids, labels)
    loss.backward()
    grads = {peft_key(f"model.{n}"): p.grad.clone() for n, p in peft.named_parameters() if p.requires_grad}
    peft.zero_grad(set_to_none=True)
    return float(loss.item()), grads


def test_a_split_step_is_the_whole_models_step(exported):
    peft, out, report = exported
    ids, labels = batch(peft.config.vocab_size)
    whole_loss, whole_grads = eager_whole_step(peft, ids, labels)

    bottom = SplitBottomTrainer(out, report["lora_inputs"], lr=0.1)
    features = bottom.features(ids)
    prefix = PrefixProgram(peft, SPLIT_LAYER)
    with prefix.cut(), torch.no_grad():
        torch.testing.assert_close(features, prefix(ids), **TOLERANCE)
    assert list(features.shape) == report["features_shape"]

    top = SplitTop(peft, SPLIT_LAYER, lr=0.1)
    loss, feature_grad = top.loss_and_feature_grad(features, labels)
    assert loss == pytest.approx(whole_loss, abs=1e-5)
    top_grads = {peft_key(f"model.{n}"): p.grad for n, p in top.parameters.items()}
    bottom_grads = bottom.backward(ids, feature_grad, step=False)
    assert set(top_grads) | set(bottom_grads) == set(whole_grads) and not set(top_grads) & set(bottom_grads)
    assert set(bottom_grads) == set(report["lora_inputs"])
    for key, grad in {**top_grads, **bottom_grads}.items():
        torch.testing.assert_close(grad, whole_grads[key], **TOLERANCE, msg=key)
    peft.zero_grad(set_to_none=True)


def test_the_bottom_steps_sgd_in_place_and_its_features_follow(exported, tmp_path):
    peft, out, report = exported
    ids, _ = batch(peft.config.vocab_size, seed=2)
    bottom = SplitBottomTrainer(out, report["lora_inputs"], lr=0.5)
    start = bottom.adapter_tensors()
    grad = torch.randn(report["features_shape"], generator=torch.Generator().manual_seed(3))
    gradients = bottom.backward(ids, grad)
    after = bottom.adapter_tensors()
    for key in report["lora_inputs"]:
        torch.testing.assert_close(after[key], start[key] - 0.5 * gradients[key], **TOLERANCE, msg=key)
    # the features program runs on the updated weights, as an eager bottom with them would
    updated = lora_everywhere()
    with torch.no_grad():
        for name, parameter in updated.named_parameters():
            if parameter.requires_grad and peft_key(f"model.{name}") in after:
                parameter.copy_(after[peft_key(f"model.{name}")])
    prefix = PrefixProgram(updated, SPLIT_LAYER)
    with prefix.cut(), torch.no_grad():
        torch.testing.assert_close(bottom.features(ids), prefix(ids), **TOLERANCE)


def test_cuts_that_leave_a_side_empty_or_the_device_nothing_to_train_are_refused():
    peft = lora_everywhere()
    depth = len(causal_lm_of(peft).get_decoder().layers)
    for bad in (0, depth, -1, 1.5, True):
        with pytest.raises(ValueError, match="split_layer must be an integer"):
            check_split_layer(peft, bad)
    top_only = lora_everywhere(layers=1)
    with pytest.raises(ValueError, match="no LoRA weights below layer 2"):
        check_split_layer(top_only, 2)
    with pytest.raises(ValueError, match="no LoRA weights at or above layer 2"):
        SplitTop(_bottom_only(), 2, lr=0.1)


def _bottom_only() -> torch.nn.Module:
    """LoRA on every layer, with the top's switched off (frozen): the server has nothing to train."""
    peft = lora_everywhere()
    for name, parameter in peft.named_parameters():
        if "lora_" in name and int(name.split("layers.")[1].split(".")[0]) >= 2:
            parameter.requires_grad_(False)
    return peft


def test_the_device_refuses_a_malformed_gradient_from_the_server_before_anything_changes(exported):
    peft, out, report = exported
    ids, _ = batch(peft.config.vocab_size, seed=4)
    bottom = SplitBottomTrainer(out, report["lora_inputs"], lr=0.5)
    start = bottom.adapter_tensors()
    shape = report["features_shape"]
    for bad in (torch.zeros(shape[0], shape[1], shape[2] + 1), torch.zeros(shape, dtype=torch.float64),
                torch.full(shape, float("nan")), "not a tensor"):
        with pytest.raises(ValueError, match="the server's gradient"):
            bottom.backward(ids, bad)
    for key, value in bottom.adapter_tensors().items():
        assert torch.equal(value, start[key]), key
