"""The ``nn.Module`` wrappers that become ExecuTorch programs.

Three programs can be compiled from one LoRA-wrapped causal LM:

- :class:`TrainingProgram` ``forward(ids, labels) -> loss``: the whole model; the exporter
  adds the backward pass.
- :class:`PrefixProgram` ``forward(ids) -> hidden``: inference through the frozen bottom of the
  model, up to the input of the lowest LoRA layer. Nothing below that layer ever changes
  during training, so a device computes this once per example and caches it.
- :class:`TopTrainingProgram` ``forward(hidden, labels) -> loss``: training from a cached
  prefix output through the LoRA layers, the final norm and the LM head.

All three wrap the PEFT model under the same attribute, so every parameter keeps its fully
qualified name: the LoRA tensors of the top program are named exactly as in the whole one,
and one ``.ptd`` adapter file serves both. Prefix and top are the whole model cut in two:
running the layers that the other half owns as pass-throughs keeps Hugging Face's own
position ids, rotary embeddings and causal mask, rather than a second copy of them here.

The loss is written for compilation, not for eager speed (:func:`next_token_loss`): eager
PyTorch keeps using ``F.cross_entropy`` (:class:`export.executorch.LanguageModelLoss`), and
tests hold the two to the same values.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from models.batching import IGNORE_INDEX

#: Attribute under which the wrappers hold the PEFT model: the ``model.`` in program tensor names.
WRAPPED_MODEL_ATTRIBUTE = "model"


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face ``*ForCausalLM`` inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def next_token_loss(causal_lm: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
    """
    head = causal_lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("LM heads with a bias are not supported by the exported loss")
    config = causal_lm.config
    for unsupported in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, unsupported, None):
            raise NotImplementedError(f"the exported loss does not implement {unsupported} ({type(causal_lm).__name__})")
    width = hidden.size(-1)
    rows = hidden[:, :-1].reshape(-1, width)
    targets = labels[:, 1:].reshape(-1)
    counted = targets != IGNORE_INDEX
    safe_targets = torch.where(counted, targets, torch.zeros_like(targets))
    log_normalizer = torch.logsumexp(head(rows), dim=-1)
    target_logits = (rows * F.embedding(safe_targets, head.weight)).sum(-1)
    weights = counted.to(rows.dtype)
    return ((log_normalizer - target_logits) * weights).sum() / weights.sum()


class _PassThroughLayer(torch.nn.Module):
    """Stands in for a decoder layer (or the final norm) that another program computes."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def computing_only(causal_lm: torch.nn.Module, layers: range, final_norm: bool):
    """Within the block, the decoder runs only ``layers`` (and the final norm if ``final_norm``).

    The other layers are swapped for pass-throughs in a copy of the layer list, and restored
    on exit; kept layers stay the same module objects, so their parameter names do not change.
    """
    decoder = causal_lm.get_decoder()
    original_layers, original_norm = decoder.layers, decoder.norm
    decoder.layers = torch.nn.ModuleList(
        layer if index in layers else _PassThroughLayer() for index, layer in enumerate(original_layers))
    if not final_norm:
        decoder.norm = _PassThroughLayer()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = original_layers, original_norm


class TrainingProgram(torch.nn.Module):
    """``forward(ids, labels) -> loss`` through the whole model (exported with its backward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        setattr(self, WRAPPED_MODEL_ATTRIBUTE, model)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        causal_lm = causal_lm_of(getattr(self, WRAPPED_MODEL_ATTRIBUTE))
        hidden = causal_lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
        return next_token_loss(causal_lm, hidden, labels)


class _SplitProgram(torch.nn.Module):
    """A program that computes one side of the cut below decoder layer ``first_trained_layer``.

    It only means what it says inside :meth:`cut`, which swaps the other side's layers for
    pass-throughs; export it (and call it in tests) within that block. Outside, the module
    tree still holds the whole model, so calling it refuses rather than compute the wrong
    thing. Swapping *before* export, not inside ``forward``, matters: export lifts every
    parameter the module tree holds, and the other side's weights must not ride along.
    """

    def __init__(self, model: torch.nn.Module, first_trained_layer: int):
        super().__init__()
        setattr(self, WRAPPED_MODEL_ATTRIBUTE, model)
        self.first_trained_layer = first_trained_layer
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

    ``hidden`` enters the decoder where the token embeddings would.
    """

    def _kept_layers(self) -> tuple[range, bool]:
        return range(self.first_trained_layer, len(self.causal_lm.get_decoder().layers)), True

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return next_token_loss(self.causal_lm, self._decoder_output(inputs_embeds=hidden), labels)
