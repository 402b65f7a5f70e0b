"""The ``nn.Module`` wrappers that become ExecuTorch programs.

Three programs can be compiled from one LoRA-wrapped causal LM:

- :class:`TrainingProgram` ``forward(ids, labels) -> loss``: the whole model; the exporter
  adds the backward pass.
- :class:`PrefixProgram` ``forward(ids) -> hidden``: inference through the frozen bottom of the
  model, up to the input of the lowest LoRA layer. Nothing below that layer ever changes
  during training, so a device computes this once per example and caches it.
- :class:`TopTrainingProgram` ``forward(hidden, labels) -> loss``: training from a cached
  prefix output through the LoRA layers, the final norm and the LM head.

Split learning (MergeSFL) cuts the same way but trains on both sides: the device owns the bottom
*with* its LoRA and the server the top (:mod:`coordinator.split.top`, eager). Two device programs:

- :class:`BottomFeaturesProgram` ``forward(ids, *lora) -> features``: the cut-layer features,
  inference only, with the bottom's LoRA weights as *inputs*, so that the device's current
  weights (held by the training program) are used without a second copy of trainable state;
- :class:`BottomTrainingProgram` ``forward(ids, grad) -> sum(features * grad)``: exported with
  its backward, whose LoRA gradients are the vector-Jacobian product of the server's gradient
  of the features (the forward is recomputed: a device cannot keep a joint graph's activations
  between two calls).

All three wrap the PEFT model under the same attribute, so every parameter keeps its fully
qualified name: the LoRA tensors of the top program are named exactly as in the whole one,
and one ``.ptd`` adapter file serves both. Prefix and top are the whole model cut in two:
running the layers that the other half owns as pass-throughs keeps Hugging Face's own
position ids, rotary embeddings and causal mask, rather than a second copy of them here.

The loss is written for compilation, not for eager speed (:func:`next_token_loss`): eager
PyTorch keeps using ``F.cross_entropy`` (:class:`export.executorch.LanguageModelLoss`), and
tests hold the two to the same values. Training programs optionally compute it at the first
``loss_positions`` labelled positions of each row only (:func:`labelled_rows`): same inputs,
same value, a fraction of the LM head's work for tasks that label a few tokens.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from models.adapter_codec import PROGRAM_WRAPPER
from models.batching import IGNORE_INDEX
from models.decoder_cut import causal_lm_of, computing_only  # noqa: F401  (export re-exports the cut its programs use)

#: Attribute under which the wrappers hold the PEFT model: the ``model.`` in program tensor names
#: (the codec that maps PEFT keys to those names owns it).
WRAPPED_MODEL_ATTRIBUTE = PROGRAM_WRAPPER


def _checked_head(causal_lm: torch.nn.Module) -> torch.nn.Module:
    """The LM head, refusing the head variants the exported losses do not implement."""
    head = causal_lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("LM heads with a bias are not supported by the exported loss")
    config = causal_lm.config
    for unsupported in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, unsupported, None):
            raise NotImplementedError(f"the exported loss does not implement {unsupported} ({type(causal_lm).__name__})")
    return head


def labelled_rows(hidden: torch.Tensor, labels: torch.Tensor, loss_positions: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hidden states that predict the first ``loss_positions`` labelled tokens of each row.

    Returns ``rows`` [batch * K, width], ``targets`` [batch * K] (int64) and ``valid``
    [batch * K] (bool): pick ``k`` of row ``b`` is the hidden state at the ``k``-th position
    ``p`` (in order) whose next-token label ``labels[b, p + 1]`` is not ``-100``, with that
    label as its target. A row with fewer than K labelled positions fills the rest with
    padding picks: a zero row, target 0, ``valid`` false, which the losses weight by zero.

    Static shapes and only ops that every backend compiles *and differentiates*, which is why
    this is a one-hot matrix product rather than ``topk``/``argsort`` + ``gather``:

    - ``cumsum`` of the label mask numbers each row's labelled positions 1, 2, ...;
    - ``eq`` against the constant ``1..K`` (broadcast) and ``&`` with the mask gives the
      one-hot selection [batch, K, seq-1] (a position after the k-th labelled one has the
      same count, hence the ``&``);
    - the picks are ``selection @ hidden[:, :-1]``, a batched matmul: its backward is another
      matmul (ExecuTorch's portable ``bmm``/XNNPACK, ONNX ``MatMul`` whose gradient ORT 1.19
      builds natively), where a gather's backward would be a scatter-add (``index_put`` /
      ``GatherElementsGrad``), and ``topk``/``argsort`` have no ties rule two runtimes agree
      on. Multiplying by an exact 0/1 matrix copies each picked hidden state bit for bit, so
      the head sees exactly the rows the full-head loss would;
    - the targets are the same selection applied to the labels as integers (``mul`` and
      ``sum`` on int64); the constant ``1..K`` and the cumulative count never need a gradient.

    The selection costs ``2 * batch * K * seq * width`` FLOPs (4.7 MFLOP for SmolLM2 at K=8,
    B4 S128) against the ``2 * batch * (seq - 1) * width * vocab`` of a full head (29 GFLOP).
    """
    batch, width = hidden.size(0), hidden.size(-1)
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX                                         # [B, S-1]
    ranks = counted.to(torch.int64).cumsum(dim=1)                             # 1, 2, ... at labelled positions
    wanted = torch.arange(1, loss_positions + 1, dtype=torch.int64, device=labels.device)
    selection = (ranks.unsqueeze(1) == wanted.view(1, -1, 1)) & counted.unsqueeze(1)   # [B, K, S-1]
    rows = torch.matmul(selection.to(hidden.dtype), hidden[:, :-1]).reshape(batch * loss_positions, width)
    picked_targets = (selection.to(torch.int64) * targets.unsqueeze(1)).sum(dim=-1).reshape(-1)
    valid = (ranks[:, -1:] >= wanted.view(1, -1)).reshape(-1)                # row has a k-th labelled position
    return rows, picked_targets, valid


def next_token_loss(causal_lm: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                    loss_positions: int | None = None, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over ``labels != -100``, from the decoder's last hidden states.

    The same value as ``F.cross_entropy(lm_head(hidden)[:, :-1], labels[:, 1:])``, computed so
    that its joint forward/backward graph stays lean on the vocabulary axis, where a SmolLM2
    step's largest tensors live ([4 x 127 x 49152] fp32 = 95 MiB each):

    - the shift happens on hidden states *before* the LM head, so no logits are sliced
      (slicing logits copies them, and its backward scatters into a zero tensor of full size);
    - rows are flattened to 2-D before the head, so it lowers to one matrix multiply rather
      than a batched one over a weight expanded per example;
    - the target logit is ``hidden . W[target]`` (an embedding lookup of head rows) instead of a
      gather from the logits, whose backward would be another full-size scatter; only
      ``logsumexp`` touches the vocabulary axis, and its backward is ``softmax * grad``.

    With ``loss_positions`` K (the tier's field of that name) the head runs only on the
    hidden states of the first K labelled positions of each row (:func:`labelled_rows`):
    ``batch * K`` rows instead of ``batch * (seq - 1)``. For a task whose loss covers a few
    target positions (a topic word) that removes nearly all of the head's work, forward and
    backward, and its vocabulary-sized activations. The value and gradients are the full
    head's whenever no row has more than K labelled positions; the program cannot check that
    (a compiled graph has no errors to raise), so the device-side trainers and eager
    verification refuse such batches (:func:`models.batching.check_loss_positions`).

    ``logit_bias`` [vocab], when given, is added to every row's logits before the softmax (logit
    adjustment). No exported program takes it; bench/federated_tuning.py's ``la`` candidate does.
    """
    head = _checked_head(causal_lm)
    if loss_positions is None:
        width = hidden.size(-1)
        rows = hidden[:, :-1].reshape(-1, width)
        targets = labels[:, 1:].reshape(-1)
        counted = targets != IGNORE_INDEX
        safe_targets = torch.where(counted, targets, torch.zeros_like(targets))
    else:
        rows, safe_targets, counted = labelled_rows(hidden, labels, loss_positions)
    logits = head(rows)
    target_logits = (rows * F.embedding(safe_targets, head.weight)).sum(-1)
    if logit_bias is not None:
        logits = logits + logit_bias
        target_logits = target_logits + F.embedding(safe_targets, logit_bias.unsqueeze(-1)).squeeze(-1)
    log_normalizer = torch.logsumexp(logits, dim=-1)
    weights = counted.to(rows.dtype)
    return ((log_normalizer - target_logits) * weights).sum() / weights.sum()


class TrainingProgram(torch.nn.Module):
    """``forward(ids, labels) -> loss`` through the whole model (exported with its backward).

    ``loss_positions``: the head only at the first K labelled positions per row (:func:`next_token_loss`).
    """

    def __init__(self, model: torch.nn.Module, loss_positions: int | None = None):
        super().__init__()
        setattr(self, WRAPPED_MODEL_ATTRIBUTE, model)
        self.loss_positions = loss_positions

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        causal_lm = causal_lm_of(getattr(self, WRAPPED_MODEL_ATTRIBUTE))
        hidden = causal_lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        return next_token_loss(causal_lm, hidden, labels, self.loss_positions)


class _SplitProgram(torch.nn.Module):
    """A program that computes one side of the cut below decoder layer ``first_trained_layer``.

    It only means what it says inside :meth:`cut`, which swaps the other side's layers for
    pass-throughs; export it (and call it in tests) within that block. Outside, the module
    tree still holds the whole model, so calling it refuses rather than compute the wrong
    thing. Swapping *before* export, not inside ``forward``, matters: export lifts every
    parameter the module tree holds, and the other side's weights must not ride along.
    """

    def __init__(self, model: torch.nn.Module, first_trained_layer: int, loss_positions: int | None = None):
        super().__init__()
        setattr(self, WRAPPED_MODEL_ATTRIBUTE, model)
        self.first_trained_layer = first_trained_layer
        self.loss_positions = loss_positions  # used by the top program's loss only
        self._cut_active = False

    @property
    def causal_lm(self) -> torch.nn.Module:
        return causal_lm_of(getattr(self, WRAPPED_MODEL_ATTRIBUTE))

    def _kept_layers(self) -> tuple[range, bool]:
        raise NotImplementedError

    @contextlib.contextmanager
    def cut(self):
        layers, final_norm = self._kept_layers()
        with computing_only(self.causal_lm, layers, final_norm):
            self._cut_active = True
            try:
                yield self
            finally:
                self._cut_active = False

    def _decoder_output(self, **inputs) -> torch.Tensor:
        if not self._cut_active:
            raise RuntimeError(f"{type(self).__name__} runs only inside its cut() block")
        return self.causal_lm.get_decoder()(use_cache=False, **inputs).last_hidden_state


class PrefixProgram(_SplitProgram):
    """``forward(ids) -> hidden``: the input of decoder layer ``first_trained_layer`` (inference only)."""

    def _kept_layers(self) -> tuple[range, bool]:
        return range(self.first_trained_layer), False

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._decoder_output(input_ids=ids)


class TopTrainingProgram(_SplitProgram):
    """``forward(hidden, labels) -> loss`` from a prefix output through the LoRA layers and the head.

    ``hidden`` enters the decoder where the token embeddings would. ``loss_positions`` as in
    :class:`TrainingProgram`.
    """

    def _kept_layers(self) -> tuple[range, bool]:
        return range(self.first_trained_layer, len(self.causal_lm.get_decoder().layers)), True

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor, logit_bias: torch.Tensor | None = None) -> torch.Tensor:
        return next_token_loss(self.causal_lm, self._decoder_output(inputs_embeds=hidden), labels, self.loss_positions,
                               logit_bias)


class BottomFeaturesProgram(_SplitProgram):
    """``forward(ids, *lora) -> features``: the input of decoder layer ``first_trained_layer`` (the
    cut), computed with the bottom's LoRA weights given as inputs in the order of ``lora_names``
    (parameter names relative to the decoder, :func:`bottom_lora_names`). Inference only."""

    def __init__(self, model: torch.nn.Module, first_trained_layer: int, lora_names: list[str]):
        super().__init__(model, first_trained_layer)
        self.lora_names = list(lora_names)

    def _kept_layers(self) -> tuple[range, bool]:
        return range(self.first_trained_layer), False

    def forward(self, ids: torch.Tensor, *lora: torch.Tensor) -> torch.Tensor:
        if not self._cut_active:
            raise RuntimeError(f"{type(self).__name__} runs only inside its cut() block")
        if len(lora) != len(self.lora_names):
            raise ValueError(f"expected {len(self.lora_names)} LoRA tensors, got {len(lora)}")
        decoder = self.causal_lm.get_decoder()
        outputs = torch.func.functional_call(decoder, dict(zip(self.lora_names, lora)), args=(),
                                             kwargs={"input_ids": ids, "use_cache": False}, strict=False)
        return outputs.last_hidden_state


class BottomTrainingProgram(_SplitProgram):
    """``forward(ids, grad) -> sum(features * grad)``: exported with its backward, the LoRA
    gradients it returns are ``d(features)/d(lora)^T grad``, the bottom's share of the whole
    model's gradient when ``grad`` is the server's gradient of the loss with respect to the
    features. The returned value itself means nothing to the device."""

    def _kept_layers(self) -> tuple[range, bool]:
        return range(self.first_trained_layer), False

    def forward(self, ids: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (self._decoder_output(input_ids=ids) * grad).sum()


def bottom_lora_names(model: torch.nn.Module, first_trained_layer: int) -> list[str]:
    """The trainable (LoRA) parameters of the decoder layers below ``first_trained_layer``, by
    their names relative to the decoder, in the decoder's order."""
    names = []
    for name, parameter in causal_lm_of(model).get_decoder().named_parameters():
        parts = name.split(".")
        if parameter.requires_grad and parts[0] == "layers" and int(parts[1]) < first_trained_layer:
            names.append(name)
    return names
