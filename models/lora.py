"""LoRA layout: which modules get adapters, in which layers, at which rank.

The layout is a *description* (a frozen dataclass that goes into the manifest); applying it
builds a standard PEFT model, so the trainable weights are an ordinary PEFT adapter that
``PeftModel.from_pretrained`` can load. Depth (LoRA only in the last k layers) is the
lever that keeps backward passes short on weak phones; ranks rising toward the output put
capacity where fine-tuning changes the model most (as LEGEND argues).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

DEFAULT_TARGETS = ("q_proj", "v_proj")
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
KNOWN_TARGETS = ATTENTION_TARGETS + MLP_TARGETS
RANK_PATTERNS = ("uniform", "rising")

#: LoRA scale alpha / r is kept at this constant for every layer, whatever its rank, so that
#: adapters of different ranks mean the same thing and can be aggregated together.
LORA_SCALE = 2.0


@dataclass(frozen=True)
class LoraLayout:
    """Rank per layer for the last ``len(ranks)`` decoder layers, on ``targets`` modules.

    ``ranks[i]`` is the rank of layer ``first_layer + i``; ``first_layer`` is filled in by
    :func:`resolve_layout` once the model's depth is known.
    """

    ranks: tuple[int, ...]
    first_layer: int
    targets: tuple[str, ...] = DEFAULT_TARGETS
    scale: float = LORA_SCALE
    dropout: float = 0.0

    @property
    def num_layers(self) -> int:
        return len(self.ranks)

    @property
    def layer_indices(self) -> list[int]:
        return list(range(self.first_layer, self.first_layer + len(self.ranks)))

    def rank_of_layer(self, layer: int) -> int:
        return self.ranks[layer - self.first_layer]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranks"], d["targets"] = list(self.ranks), list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LoraLayout":
        return cls(ranks=tuple(int(r) for r in d["ranks"]), first_layer=int(d["first_layer"]),
                   targets=tuple(d.get("targets", DEFAULT_TARGETS)),
                   scale=float(d.get("scale", LORA_SCALE)), dropout=float(d.get("dropout", 0.0)))


def rank_schedule(rank: int, num_layers: int, pattern: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Ranks for ``num_layers`` layers (bottom to top) from a pattern name or explicit list.

    ``uniform``: every layer gets ``rank``. ``rising``: ranks grow linearly from a quarter of
    ``rank`` (at least 1) at the lowest LoRA layer to ``rank`` at the top one.
    An explicit list must have one positive rank per LoRA layer.
    """
    if rank <= 0:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    if num_layers <= 0:
        raise ValueError(f"LoRA layers must be a positive integer, got {num_layers}")
    if isinstance(pattern, (list, tuple)):
        ranks = tuple(int(r) for r in pattern)
        if len(ranks) != num_layers:
            raise ValueError(f"rank pattern lists {len(ranks)} ranks for {num_layers} LoRA layers")
        if min(ranks) <= 0:
            raise ValueError(f"every rank in the rank pattern must be positive, got {list(ranks)}")
        return ranks
    if pattern == "uniform":
        return (rank,) * num_layers
    if pattern == "rising":
        low = max(1, rank // 4)
        if num_layers == 1:
            return (rank,)
        return tuple(round(low + (rank - low) * i / (num_layers - 1)) for i in range(num_layers))
    raise ValueError(f"unknown rank pattern {pattern!r}; use {', '.join(RANK_PATTERNS)} or a comma list")


def check_targets(targets: tuple[str, ...]) -> None:
    """Refuse an empty or unknown set of LoRA target modules."""
    unknown = [t for t in targets if t not in KNOWN_TARGETS]
    if unknown or not targets:
        raise ValueError(f"unknown LoRA target modules {unknown}; use some of {', '.join(KNOWN_TARGETS)}")


def resolve_layout(num_hidden_layers: int, rank: int, lora_layers: int,
                   pattern: str | list[int] | tuple[int, ...] = "uniform",
                   targets: tuple[str, ...] = DEFAULT_TARGETS) -> LoraLayout:
    """A layout with LoRA on the last ``lora_layers`` of a model with ``num_hidden_layers``."""
    if lora_layers > num_hidden_layers:
        raise ValueError(f"{lora_layers} LoRA layers requested but the model has only "
                         f"{num_hidden_layers} layers")
    check_targets(targets)
    ranks = rank_schedule(rank, lora_layers, pattern)
    return LoraLayout(ranks=ranks, first_layer=num_hidden_layers - lora_layers, targets=tuple(targets))


def peft_config(layout: LoraLayout):
    """The PEFT ``LoraConfig`` realising ``layout`` (depth via ``layers_to_transform``, ranks via
    ``rank_pattern``, the constant scale via ``alpha_pattern``)."""
    from peft import LoraConfig

    base_rank = layout.ranks[-1]
    rank_pattern, alpha_pattern = {}, {}
    for layer in layout.layer_indices:
        r = layout.rank_of_layer(layer)
        for target in layout.targets:
            key = f"layers.{layer}.{_module_path(target)}"
            rank_pattern[key] = r
            alpha_pattern[key] = layout.scale * r
    return LoraConfig(
        r=base_rank, lora_alpha=layout.scale * base_rank, lora_dropout=layout.dropout,
        target_modules=list(layout.targets), layers_to_transform=layout.layer_indices,
        layers_pattern="layers", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        bias="none", task_type="CAUSAL_LM")


def apply_lora(model: torch.nn.Module, layout: LoraLayout, seed: int = 0):
    """Wrap ``model`` in a PEFT model with ``layout``; only the LoRA weights stay trainable.

    The LoRA A matrices are drawn from a generator seeded by ``seed`` so that the same layout
    on the same base gives the same initial adapter in every process (the exporter and the
    eager reference must start from identical weights).
    """
    from peft import get_peft_model

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, peft_config(layout))
    finally:
        torch.random.set_rng_state(state)
    return peft_model


def _module_path(target: str) -> str:
    return ("self_attn." if target in ATTENTION_TARGETS else "mlp.") + target


#: How PEFT's adapter files name a LoRA tensor: ``base_model.model.<module path>.lora_A.weight``.
_PEFT_FILE_PREFIX = "base_model.model."


@torch.no_grad()
def merged_copy(model: torch.nn.Module, adapter: dict, scale: float = LORA_SCALE) -> torch.nn.Module:
    """A deep copy of plain ``model`` with a PEFT-keyed LoRA adapter merged into its linears.

    ``W + scale * B @ A`` for every (A, B) pair in ``adapter`` (tensors or arrays keyed as in
    ``adapter_model.safetensors``); ``model`` itself is left as it was. This is "the tuned model"
    whose activations choose the next pruning step (``models.pruning.prune_model``'s
    ``importance_model``). ``ValueError`` for a tensor without its pair, a module the model lacks
    or a shape that does not fit, before anything is merged.
    """
    import copy

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in adapter.items():
        if not key.startswith(_PEFT_FILE_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise ValueError(f"{key!r} is not a LoRA tensor of a PEFT adapter file")
        path, part = key[len(_PEFT_FILE_PREFIX):].rsplit(".", 2)[:2]
        pairs.setdefault(path, {})[part] = (value.detach().float() if isinstance(value, torch.Tensor)
                                            else torch.tensor(np.asarray(value), dtype=torch.float32))
    modules = dict(model.named_modules())
    for path, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"the adapter has only {sorted(pair)} for {path}")
        linear = modules.get(path)
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"the adapter targets {path}, which is not a linear layer of the model")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(
                linear.weight.shape):
            raise ValueError(f"the adapter's {path} A {list(a.shape)} and B {list(b.shape)} do not fit the "
                             f"layer's weight {list(linear.weight.shape)}")
    merged = copy.deepcopy(model)
    merged_modules = dict(merged.named_modules())
    for path, pair in pairs.items():
        weight = merged_modules[path].weight
        weight += (scale * pair["lora_B"] @ pair["lora_A"]).to(weight.dtype)
    return merged
