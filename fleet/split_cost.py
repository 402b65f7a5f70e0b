"""Counted work of a split-learning step, for the virtual clock (as fleet/hardware.py does for a
whole-model training step).

Per step a split device runs its bottom (embeddings and layers ``0..c-1`` with LoRA) forward
twice (the features, then the training program's recompute) and backward once; the server runs
the top (layers ``c..L-1``, the final norm, the LM head) forward and backward on the merged
batch. FLOPs are analytical, from the model's config only, so the virtual clock is a property
of the experiment, never of the host.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.hardware import _linear_shapes

#: GFLOP/s the server sustains for the top's step: the reference device's fp32 XNNPACK rate
#: (fleet/virtual_clock.py) times 8, an 8-core CPU server with no accelerator. An assumption,
#: stated with every result; a GPU server would make the top's share of a step smaller still.
SERVER_SPEEDUP_OVER_REFERENCE = 8.0


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs of a decoder's config."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        heads = config.num_attention_heads
        return cls(hidden=config.hidden_size, heads=heads, kv_heads=config.num_key_value_heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   intermediate=config.intermediate_size, layers=config.num_hidden_layers, vocab=config.vocab_size)


def _layer_flops(shape: ModelShape, seq: int, tokens: int, rank: int) -> tuple[float, float]:
    """(forward, LoRA forward) FLOPs of one decoder layer with LoRA of ``rank`` on every projection."""
    shapes = _linear_shapes(shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.intermediate)
    linear = sum(2 * i * o for i, o in shapes.values()) * tokens
    attention = 2 * 2 * seq * shape.heads * shape.head_dim * tokens
    lora = sum(2 * rank * (i + o) for i, o in shapes.values()) * tokens
    return float(linear + attention + lora), float(lora)


def bottom_forward_flops(shape: ModelShape, split_layer: int, batch: int, seq: int, rank: int) -> float:
    """One forward of the bottom (what the features cost the device)."""
    forward, _ = _layer_flops(shape, seq, batch * seq, rank)
    return split_layer * forward


def bottom_step_flops(shape: ModelShape, split_layer: int, batch: int, seq: int, rank: int) -> float:
    """A device's step: two forwards of the bottom and one backward (activation gradients, as
    much as a forward, plus the LoRA weight gradients), for ``batch`` x ``seq`` tokens."""
    forward, lora = _layer_flops(shape, seq, batch * seq, rank)
    return split_layer * (2 * forward + forward + lora)


def top_step_flops(shape: ModelShape, split_layer: int, batch: int, seq: int, rank: int,
                   loss_positions: int | None = None) -> float:
    """The server's step on a merged batch of ``batch``: forward and backward of the top and the
    LM head (at ``loss_positions`` per row when the task scores only those)."""
    forward, lora = _layer_flops(shape, seq, batch * seq, rank)
    head_tokens = batch * (seq if loss_positions is None else min(loss_positions, seq))
    head = 2 * shape.hidden * shape.vocab * head_tokens
    top_layers = shape.layers - split_layer
    return top_layers * (2 * forward + lora) + 2 * head
