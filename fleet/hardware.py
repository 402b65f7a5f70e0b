"""What a device's hardware can do and how much of it training uses, as in "Federated
Fine-Tuning of LLMs on the Very Edge": analytical training FLOPs per step, the device's
measured matmul peak, and the FLOP utilization that follows from the two.

FLOPs are counted, not sampled: a multiply-add is 2 FLOPs, and a training step of a LoRA
program costs

- the forward pass of every layer (the frozen prefix too: its output feeds the LoRA layers),
  except with a prefix cache, where the step starts at the lowest LoRA layer;
- the backward pass for activations from the loss down to the lowest LoRA layer only (nothing
  below it has a trainable parameter, and no frozen weight gets a gradient);
- the LoRA weight gradients (the same size of matmul as their forward).

Attention score/value products are counted as full [seq, seq] matmuls, as the exported
SDPA computes them (causal masking does not skip the work). A program with a label-position
head (``program.loss_positions`` K) runs the LM head at K positions per row instead of ``seq``.

A task's work (:func:`task_flops`) is its steps times a step's FLOPs plus, for a tier with a
prefix program, the forward of the frozen layers below the lowest LoRA layer for every example
whose prefix output was not cached yet. The virtual clock (``fleet/virtual_clock.py``) divides
it by a profile's sustained rate; measured times only feed the utilization figures here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from export.manifest import program_batch_shape

_MODULE_SHAPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step split by where they go (all for a whole [batch, seq] batch)."""

    forward: float
    backward_activations: float
    lora_weight_gradients: float

    @property
    def total(self) -> float:
        return self.forward + self.backward_activations + self.lora_weight_gradients


def _linear_shapes(hidden: int, heads: int, kv_heads: int, head_dim: int, inter: int) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection in a Llama decoder layer."""
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv_heads * head_dim),
            "v_proj": (hidden, kv_heads * head_dim), "o_proj": (heads * head_dim, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def training_flops(manifest: dict) -> StepFlops:
    """Analytical FLOPs of one training step of the artifact ``manifest`` describes."""
    pruned, base = manifest["pruned_model"], manifest["base_model"]
    batch, seq = program_batch_shape(manifest)
    layout = manifest["lora"]["layout"]
    hidden, vocab = base["hidden_size"], base["vocab_size"]
    heads, kv_heads = pruned["num_attention_heads"], pruned["num_key_value_heads"]
    head_dim = pruned.get("head_dim") or hidden // heads
    layers = pruned["num_hidden_layers"]
    shapes = _linear_shapes(hidden, heads, kv_heads, head_dim, pruned["intermediate_size"])
    tokens = batch * seq

    layer_linear = sum(2 * i * o for i, o in shapes.values()) * tokens
    attention = 2 * 2 * seq * heads * head_dim * tokens          # QK^T and PV, full [seq, seq]
    layer_forward = layer_linear + attention
    # A label-position head (``program.loss_positions`` K) runs the LM head at the first K
    # labelled positions of each row only, forward and backward.
    loss_positions = (manifest.get("program") or {}).get("loss_positions")
    head_tokens = tokens if loss_positions is None else batch * min(int(loss_positions), seq)
    lm_head = 2 * hidden * vocab * head_tokens

    ranks = list(layout["ranks"])
    first = int(layout["first_layer"])
    lora_forward = sum(2 * r * (shapes[t][0] + shapes[t][1]) * tokens for r in ranks for t in layout["targets"])
    trained_layers = layers - first
    # With a prefix cache the step starts at the lowest LoRA layer (the prefix runs once per example).
    forward_layers = trained_layers if manifest.get("prefix") else layers
    forward = forward_layers * layer_forward + lm_head + lora_forward
    # Gradients w.r.t. activations cost what the forward matmuls cost (attention: twice, for
    # both operands of each product); the lm_head passes the loss's gradient down.
    backward = trained_layers * (layer_linear + 2 * attention) + lm_head + lora_forward
    return StepFlops(forward=float(forward), backward_activations=float(backward),
                     lora_weight_gradients=float(lora_forward))


def prefix_flops_per_example(manifest: dict) -> float:
    """FLOPs of the prefix program for one example: the forward of every layer below the
    lowest LoRA layer, ``seq`` tokens (0 for an artifact without a prefix program)."""
    if not manifest.get("prefix"):
        return 0.0
    base, pruned = manifest["base_model"], manifest["pruned_model"]
    _, seq = program_batch_shape(manifest)
    hidden = base["hidden_size"]
    heads, kv_heads = pruned["num_attention_heads"], pruned["num_key_value_heads"]
    head_dim = pruned.get("head_dim") or hidden // heads
    shapes = _linear_shapes(hidden, heads, kv_heads, head_dim, pruned["intermediate_size"])
    layer_forward = sum(2 * i * o for i, o in shapes.values()) * seq + 2 * 2 * seq * heads * head_dim * seq
    return float(int(manifest["lora"]["layout"]["first_layer"]) * layer_forward)


def task_flops(manifest: dict, steps: int, prefix_examples: int = 0) -> float:
    """Counted work of a task: ``steps`` training steps (a loss pass costs a step: the runtime
    computes its gradients too) and ``prefix_examples`` prefix-program passes."""
    return steps * training_flops(manifest).total + prefix_examples * prefix_flops_per_example(manifest)


def measure_matmul_gflops(size: int = 256, min_seconds: float = 0.3, threads: int = 1) -> float:
    """The device's fp32 matmul throughput (GFLOP/s) on ``threads`` threads: its practical peak.

    Measured, never assumed: a phone's (or a simulated device's) peak is what its own cores
    deliver on a square matmul the size of a small model's projections.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up: first call pays for allocation and dispatch
        runs, start = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
    finally:
        torch.set_num_threads(previous)
    return 2 * size ** 3 * runs / elapsed / 1e9


def utilization(flops_per_step: float, steps: int, compute_seconds: float, peak_gflops: float) -> dict:
    """Achieved GFLOP/s over the training steps and its ratio to the measured peak."""
    achieved = flops_per_step * steps / compute_seconds / 1e9 if compute_seconds > 0 else 0.0
    return {"achieved_gflops": achieved, "flop_utilization": achieved / peak_gflops if peak_gflops > 0 else 0.0}
