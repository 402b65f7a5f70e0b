"""The label-position head (``Tier.loss_positions``): the LM head only where a label is.

Eager, ExecuTorch and ONNX Runtime programs compiled with ``loss_positions`` K must compute
the full head's loss and gradients on every batch whose rows carry at most K labels, and every
trainer must refuse a batch with more before it runs anything. The batches are the
``bbcnews`` task's (the topic word is the only label; on the tiny byte-level model that word
is 5-14 tokens, so K is the longest one). Speed is measured by ``bench/train_step.py``.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from conftest import TINY_BATCH, TINY_SEQ, tiny_batches, tiny_tier
from export.executorch import ADAPTER_DATA_FILE, LanguageModelLoss, read_adapter_ptd
from export.program_modules import PrefixProgram, TopTrainingProgram, TrainingProgram, labelled_rows
from models.batching import IGNORE_INDEX, check_loss_positions, labelled_positions_per_row


def _longest_label(tokenizer) -> int:
    from models.tasks import get_task

    return max(len(tokenizer(f" {label}", add_special_tokens=False)["input_ids"])
               for label in get_task("bbcnews").labels)


def _task_batches(tokenizer, count: int = 4):
    """bbcnews batches with the topics interleaved, so batches mix label lengths (5-14 byte tokens)."""
    from models.tasks import get_task

    task = get_task("bbcnews")
    by_label: dict[str, list] = {}
    for example in task.examples("train"):
        by_label.setdefault(example.label, []).append(example)
    mixed = [group[i] for i in range(TINY_BATCH * count) for group in by_label.values()][: TINY_BATCH * count]
    return task.batches(tokenizer, mixed, TINY_BATCH, TINY_SEQ)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from models.registry import load_base_model

    return load_base_model("tiny").tokenizer


@pytest.fixture(scope="module")
def label_k(tiny_tokenizer) -> int:
    k = _longest_label(tiny_tokenizer)
    assert k == len(" entertainment")          # byte tokens
    return k


@pytest.fixture()
def trained_looking(label_k):
    """A tiny PEFT model with non-zero LoRA B (at init they are zero, which hides LoRA bugs)."""
    from export.pipeline import build_training_model
    from models.registry import load_base_model

    training = build_training_model(load_base_model("tiny"), tiny_tier(loss_positions=label_k))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in training.peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return training


def _loss_and_grads(model, module, ids, labels):
    model.zero_grad(set_to_none=True)
    loss = module(ids, labels)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _max_gap(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --- the selection itself -----------------------------------------------------------------------

def test_labelled_rows_picks_the_first_k_labelled_positions_in_order():
    hidden = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, [2, 3, 5]] = torch.tensor([7, 8, 9])      # predicted from positions 1, 2, 4
    labels[1, 0] = 4                                     # position 0's label never counts: no targets
    rows, targets, valid = labelled_rows(hidden, labels, 2)
    assert rows.shape == (4, 3) and targets.tolist() == [7, 8, 0, 0] and valid.tolist() == [True, True, False, False]
    assert torch.equal(rows[:2], hidden[0, [1, 2]]) and torch.equal(rows[2:], torch.zeros(2, 3))
    rows, targets, valid = labelled_rows(hidden, labels, 5)
    assert targets.tolist()[:3] == [7, 8, 9] and valid.tolist() == [True] * 3 + [False] * 7
    assert torch.equal(rows[2], hidden[0, 4])
    assert labelled_positions_per_row(labels).tolist() == [3, 0]


def test_check_loss_positions_names_the_row_and_the_limit():
    labels = torch.full((3, 8), IGNORE_INDEX)
    labels[2, 1:6] = 1
    check_loss_positions(labels, 5)
    check_loss_positions(labels, None)
    with pytest.raises(ValueError, match=r"batch row 2 has 5 labelled positions.*first 4 per row"):
        check_loss_positions(labels, 4)


# --- eager: the programs before compilation -----------------------------------------------------

def test_label_position_loss_and_gradients_equal_the_full_head(trained_looking, label_k):
    model, first = trained_looking.peft_model, trained_looking.layout.first_layer
    tokenizer = trained_looking.base.tokenizer
    ids, labels = _task_batches(tokenizer, 1)[0]
    labels = labels.clone()
    labels[1] = IGNORE_INDEX                               # a row without any label: padding picks only
    counts = labelled_positions_per_row(labels)
    assert counts[0] <= label_k and counts[1] == 0         # the empty row's picks are all padding (weight 0)
    full_loss, full_grads = _loss_and_grads(model, LanguageModelLoss(model), ids, labels)
    for module in (TrainingProgram(model, label_k), LanguageModelLoss(model, label_k)):
        loss, grads = _loss_and_grads(model, module, ids, labels)
        assert abs(loss - full_loss) < 1e-5 and _max_gap(grads, full_grads) < 1e-5, type(module).__name__
    prefix, top = PrefixProgram(model, first), TopTrainingProgram(model, first, label_k)
    with prefix.cut():
        hidden = prefix(ids)
    with top.cut():
        loss, grads = _loss_and_grads(model, lambda _, lab: top(hidden, lab), ids, labels)
    assert abs(loss - full_loss) < 1e-5 and _max_gap(grads, full_grads) < 1e-5


def test_every_position_labelled_with_k_seq_minus_1_is_the_full_head(trained_looking):
    """Dense labels (language modelling) and K = seq - 1: every position is picked."""
    model = trained_looking.peft_model
    ids, labels = tiny_batches(trained_looking.base.tokenizer, count=1)[0]
    assert labelled_positions_per_row(labels).tolist() == [TINY_SEQ - 1] * TINY_BATCH
    full_loss, full_grads = _loss_and_grads(model, LanguageModelLoss(model), ids, labels)
    loss, grads = _loss_and_grads(model, TrainingProgram(model, TINY_SEQ - 1), ids, labels)
    assert abs(loss - full_loss) < 1e-5 and _max_gap(grads, full_grads) < 1e-5


def test_eager_label_position_loss_refuses_rows_with_more_labels(trained_looking, label_k):
    ids, labels = tiny_batches(trained_looking.base.tokenizer, count=1)[0]
    with pytest.raises(ValueError, match=f"first {label_k} per row"):
        LanguageModelLoss(trained_looking.peft_model, label_k)(ids, labels)


# --- compiled: ExecuTorch and ONNX Runtime -----------------------------------------------------

_ARTIFACTS = {
    "executorch-portable": dict(kernels="portable"),
    "executorch-portable-prefix": dict(kernels="portable", prefix_cache=True),
    "executorch-xnnpack": dict(kernels="xnnpack"),
    "onnxruntime": dict(artifact_format="onnxruntime"),
}


@pytest.fixture(scope="module")
def label_artifacts(tmp_path_factory, label_k):
    """Label-position artifacts of the tiny model, exported once per module, by name."""
    from export.pipeline import export_artifact

    built = {}

    def get(name: str):
        if name not in built:
            options = dict(_ARTIFACTS[name])
            artifact_format = options.pop("artifact_format", "executorch")
            out = tmp_path_factory.mktemp("loss-positions") / name
            training, manifest = export_artifact("tiny", tiny_tier(loss_positions=label_k, **options), out,
                                                 artifact_format=artifact_format)
            built[name] = out, training, manifest
        return built[name]

    return get


@pytest.mark.parametrize("name", list(_ARTIFACTS))
def test_compiled_label_position_program_trains_like_the_full_head_in_eager(label_artifacts, name, label_k):
    """10 SGD steps in the runtime (head at <= K positions) and in eager PyTorch (head everywhere)."""
    from fleet.verify import verify_against_eager

    out, training, manifest = label_artifacts(name)
    assert manifest["program"]["loss_positions"] == label_k and manifest["tier"]["loss_positions"] == label_k
    batches = _task_batches(training.base.tokenizer, 4)
    counts = torch.cat([labelled_positions_per_row(labels) for _, labels in batches])
    assert int(counts.max()) == label_k and int(counts.min()) < label_k      # K exactly, and padding picks
    result = verify_against_eager(copy.deepcopy(training.peft_model), out, batches, 10, lr=training.tier.train.lr)
    assert result["max_abs_loss_diff"] <= 1e-4, result
    assert result["max_abs_lora_diff"] <= 1e-5, result
    assert result["max_abs_lora_change"] > 1e-2, "LoRA weights barely moved: the comparison proves nothing"


def test_manifest_describes_the_label_position_head(label_artifacts, tiny_fp32_artifact, label_k):
    for name in ("executorch-portable", "onnxruntime"):
        program = label_artifacts(name)[2]["program"]
        assert program["loss_positions"] == label_k
        assert f"first {label_k} labelled positions" in program["outputs"][0]["meaning"]
        assert [i["name"] for i in program["inputs"]][-1] == "labels"          # inputs unchanged
    full = tiny_fp32_artifact[2]
    assert full["program"]["loss_positions"] is None and "loss_positions" not in full["tier"]


def test_executorch_trainer_refuses_a_batch_with_more_labels_before_running(label_artifacts, label_k, tmp_path):
    from export.manifest import read_manifest
    from fleet.runtime_executorch import ExecuTorchTrainer

    for name in ("executorch-portable", "executorch-portable-prefix"):
        out, training, _ = label_artifacts(name)
        manifest = read_manifest(out).data
        trainer = ExecuTorchTrainer.for_artifact(out, manifest, out / ADAPTER_DATA_FILE, lr=0.5,
                                                 cache_dir=tmp_path / name)
        assert trainer.loss_positions == label_k
        text = tiny_batches(training.base.tokenizer, count=1)[0]          # every token labelled
        for call in (trainer.step, trainer.loss):
            with pytest.raises(ValueError, match=f"has {TINY_SEQ - 1} labelled positions.*first {label_k} per row"):
                call(*text)
        if trainer.prefix is not None:
            assert trainer.prefix.stats.computed == 0                       # not even the prefix ran
        trainer.loss(*_task_batches(training.base.tokenizer, 1)[0])          # a batch that fits runs...
        initial = read_adapter_ptd(out / ADAPTER_DATA_FILE)
        assert all(torch.equal(initial[k], v) for k, v in trainer.adapter_tensors().items())   # ...nothing stepped


def test_onnxruntime_trainer_refuses_a_batch_with_more_labels_before_running(label_artifacts, label_k):
    from fleet.runtime_onnxruntime import OnnxRuntimeTrainer, read_start_adapter
    from fleet.verify import max_abs_difference

    out, training, manifest = label_artifacts("onnxruntime")
    start = read_start_adapter(out / "initial_adapter" / "adapter_model.safetensors")
    trainer = OnnxRuntimeTrainer(out, manifest, start, lr=0.5)
    assert trainer.loss_positions == label_k
    text = tiny_batches(training.base.tokenizer, count=1)[0]
    for call in (trainer.step, trainer.loss):
        with pytest.raises(ValueError, match=f"first {label_k} per row"):
            call(*text)
    assert max_abs_difference(trainer.adapter_tensors(), start) == 0.0
    trainer.step(*_task_batches(training.base.tokenizer, 1)[0])
    assert max_abs_difference(trainer.adapter_tensors(), start) > 0.0


def test_verification_refuses_batches_that_do_not_fit(label_artifacts, label_k):
    from export.executorch import trainable_adapter_tensors
    from fleet.verify import max_abs_difference, verify_against_eager

    out, training, _ = label_artifacts("executorch-portable")
    model = copy.deepcopy(training.peft_model)
    before = trainable_adapter_tensors(model)
    batches = [*_task_batches(training.base.tokenizer, 1), *tiny_batches(training.base.tokenizer, count=1)]
    with pytest.raises(ValueError, match=f"cannot verify on batch 1: .*first {label_k} per row"):
        verify_against_eager(model, out, batches, 2, lr=0.5)
    assert max_abs_difference(trainable_adapter_tensors(model), before) == 0.0


# --- tier and command line ---------------------------------------------------------------------

def test_tier_field_is_compiled_and_keyed_only_when_set():
    from coordinator.services.artifacts import artifact_key, compiled_tier
    from models.tier import Tier

    plain, label = Tier(), Tier(loss_positions=1)
    assert "loss_positions" not in plain.to_dict()                   # older tiers keep their dict and key
    assert compiled_tier(label.to_dict())["loss_positions"] == 1
    assert Tier.from_dict(label.to_dict()) == label and Tier.from_dict(plain.to_dict()) == plain
    assert artifact_key("tiny", plain.to_dict()) != artifact_key("tiny", label.to_dict())
    assert artifact_key("tiny", plain.to_dict()) == artifact_key("tiny", Tier(loss_positions=None).to_dict())


@pytest.mark.parametrize("value, message", [
    ("0", "loss positions must be an integer in [1, 31]"),
    ("32", "loss positions must be an integer in [1, 31]"),
    ("x", "invalid int value"),
])
def test_export_cli_refuses_bad_loss_positions(value, message, tmp_path, capsys):
    from pockettune.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(["export", "--model", "tiny", "--seq", "32", "--loss-positions", value, "--out", str(out),
                               "--no-progress"]))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_export_cli_help_describes_loss_positions():
    proc = subprocess.run([sys.executable, "-m", "pockettune", "export", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--loss-positions K" in proc.stdout and "labelled" in proc.stdout
