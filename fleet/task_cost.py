"""What a tier costs on a device, estimated before anything is exported.

A configurator that plans by device capability must compare tiers that may not be built yet,
so it cannot read an artifact's manifest. Here the cost of ``local_steps`` steps of a tier on a
device is estimated from the base model's shape, the tier and the device's *reported* figures
(``gflops``, ``bandwidth_mbps``): compute from :func:`fleet.hardware.training_flops`, the same
FLOP count the virtual clock and the utilization figures use, and transfer from the adapter's
size. It sits beside :mod:`fleet.hardware` because it is that module's FLOP model applied to a
device's reported speed; the coordinator's configurators import it downward (fleet never
imports the coordinator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleet.hardware import training_flops
from models.pruning import attention_shape, kept_count
from models.tier import Tier
from models.tier_algebra import tier_ranks

#: Assumed when a device reports no usable ``bandwidth_mbps`` (missing or 0): a mid-range
#: phone's link (megabits per second), the order of magnitude of the simulator's midrange profile.
DEFAULT_BANDWIDTH_MBPS = 10.0
#: Assumed when a device reports no usable ``gflops`` (missing or 0): deliberately low, so an
#: unmeasured device is planned as a slow one until its own task times say otherwise.
DEFAULT_GFLOPS = 1.0
#: Adapters travel as float32.
ADAPTER_BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class TaskTimeEstimate:
    """Estimated seconds of one task: training steps, and adapter download plus upload."""

    compute_seconds: float
    transfer_seconds: float

    @property
    def total(self) -> float:
        return self.compute_seconds + self.transfer_seconds


def pruned_shape(model_shape: dict, prune_ratio: float, prune_method: str = "width") -> dict:
    """The shape a pruned model will have, from the counts :mod:`models.pruning` keeps.

    Width pruning keeps the same number of heads and MLP channels in every layer
    (:func:`~models.pruning.attention_shape`, :func:`~models.pruning.kept_count`); layer
    pruning drops ``round(ratio * L)`` layers, never the first or the last. Only the counts are
    predicted here; which heads, channels or layers survive is decided at export.
    """
    shape = dict(model_shape)
    shape.setdefault("head_dim", shape["hidden_size"] // shape["num_attention_heads"])
    if prune_ratio <= 0:
        return shape
    if prune_method == "layers":
        layers = shape["num_hidden_layers"]
        shape["num_hidden_layers"] = layers - min(max(layers - 2, 0), int(math.floor(prune_ratio * layers + 0.5)))
        return shape
    kv, per_group = attention_shape(shape["num_attention_heads"], shape["num_key_value_heads"],
                                    shape["hidden_size"], prune_ratio)
    shape["num_attention_heads"], shape["num_key_value_heads"] = kv * per_group, kv
    shape["intermediate_size"] = kept_count(shape["intermediate_size"], prune_ratio)
    return shape


def _target_features(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each LoRA-targetable projection of a decoder layer of ``shape``."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}


def adapter_bytes(tier: dict, model_shape: dict) -> int:
    """Bytes of ``tier``'s LoRA adapter (A: r x in and B: out x r per target and layer, float32)."""
    t = Tier.from_dict(tier)
    features = _target_features(pruned_shape(model_shape, t.prune_ratio, t.prune_method))
    values = sum(r * (features[name][0] + features[name][1]) for r in tier_ranks(tier) for name in t.lora_targets)
    return values * ADAPTER_BYTES_PER_VALUE


def step_flops(tier: dict, model_shape: dict) -> float:
    """Analytical FLOPs of one training step of ``tier`` (:func:`fleet.hardware.training_flops`).

    The manifest an export would write is stood in for by the parts ``training_flops`` reads,
    with the pruned shape from :func:`pruned_shape`. It is an estimate before export: the
    exported manifest has the exact shapes.
    """
    t = Tier.from_dict(tier)
    shape = pruned_shape(model_shape, t.prune_ratio, t.prune_method)
    ranks = tier_ranks(tier)
    if len(ranks) > shape["num_hidden_layers"]:
        raise ValueError(f"{len(ranks)} LoRA layers requested but the pruned model has only "
                         f"{shape['num_hidden_layers']} layers")
    manifest = {"pruned_model": shape, "base_model": dict(model_shape),
                "tier": {"batch": t.batch, "seq": t.seq},
                "lora": {"layout": {"ranks": list(ranks), "first_layer": shape["num_hidden_layers"] - len(ranks),
                                    "targets": list(t.lora_targets)}},
                "prefix": {"cached": True} if t.prefix_cache else None}
    return training_flops(manifest).total


def _positive(capabilities: dict, key: str, default: float) -> float:
    value = capabilities.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        return default
    return float(value)


def reported_speed(capabilities: dict) -> tuple[float, float]:
    """(GFLOP/s, Mbit/s) a device reports, with :data:`DEFAULT_GFLOPS` and
    :data:`DEFAULT_BANDWIDTH_MBPS` standing in for missing or zero figures."""
    return (_positive(capabilities, "gflops", DEFAULT_GFLOPS),
            _positive(capabilities, "bandwidth_mbps", DEFAULT_BANDWIDTH_MBPS))


def estimate_task_time(tier: dict, local_steps: int, model_shape: dict, capabilities: dict) -> TaskTimeEstimate:
    """Seconds ``local_steps`` steps of ``tier`` take on a device, and its adapter's round trip.

    Compute: ``local_steps * step_flops / (gflops * 1e9)``, i.e. as if the device trained at its
    measured matmul peak; real steps are slower by a roughly constant factor per device, which
    a configurator with task history can calibrate. Transfer: the adapter down and back up
    at ``bandwidth_mbps`` (:data:`DEFAULT_BANDWIDTH_MBPS` when unreported). Artifact
    downloads are not counted: a device fetches an artifact once and keeps it.
    """
    gflops, mbps = reported_speed(capabilities)
    compute = local_steps * step_flops(tier, model_shape) / (gflops * 1e9)
    transfer = 2 * adapter_bytes(tier, model_shape) * 8 / (mbps * 1e6)
    return TaskTimeEstimate(compute_seconds=compute, transfer_seconds=transfer)


def compute_slowdown(tier: dict, local_steps: int, model_shape: dict, capabilities: dict,
                     compute_seconds: float) -> float | None:
    """Measured compute time over :func:`estimate_task_time`'s (None when either is not positive)."""
    try:
        estimate = estimate_task_time(tier, local_steps, model_shape, capabilities).compute_seconds
    except (TypeError, ValueError, KeyError):
        return None
    if estimate <= 0 or not compute_seconds or compute_seconds <= 0:
        return None
    return compute_seconds / estimate


def slowed(capabilities: dict, slowdown: float) -> dict:
    """``capabilities`` with its GFLOP/s divided by ``slowdown`` (what it really achieves)."""
    gflops, _ = reported_speed(capabilities)
    return {**capabilities, "gflops": gflops / slowdown}


def estimate_task_seconds(tier: dict, local_steps: int, model_shape: dict, capabilities: dict) -> float:
    """Total of :func:`estimate_task_time`: compute plus adapter download and upload, in seconds."""
    return estimate_task_time(tier, local_steps, model_shape, capabilities).total
