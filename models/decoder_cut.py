"""A Hugging Face causal LM's decoder run over a range of its layers only.

Frozen-prefix caching splits one model into a bottom that runs once per example and a top
that trains: the exporter compiles each side as a program (:mod:`export.program_modules`) and
the server scores through the same split (:mod:`models.frozen_prefix`). Both cut the decoder
the same way, by swapping the layers another program computes for pass-throughs, so the cut
lives here, at the bottom of the package graph, where both sides can import it.
"""

from __future__ import annotations

import contextlib

import torch


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face ``*ForCausalLM`` inside a PEFT model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
    if any(isinstance(original_layers[index], _PassThroughLayer) for index in layers) or (
            final_norm and isinstance(original_norm, _PassThroughLayer)):
        # Inside another cut, the layers asked for are already pass-throughs: the result would
        # be silently wrong (the embeddings, not the layers' output), so refuse.
        raise RuntimeError("computing_only inside another cut that removed the layers it needs")
    decoder.layers = torch.nn.ModuleList(
        layer if index in layers else _PassThroughLayer() for index, layer in enumerate(original_layers))
    if not final_norm:
        decoder.norm = _PassThroughLayer()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = original_layers, original_norm
