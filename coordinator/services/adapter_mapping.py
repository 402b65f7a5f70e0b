"""Moving LoRA adapters between a job's reference tier and the smaller tiers devices train.

A heterogeneous job keeps one *global* adapter in the layout of its **reference tier** (the
job's own tier: LoRA on its last K layers at rank R, on the unpruned model or on a
width- or layer-pruned one). A device may train a sub-tier of it: a more width-pruned model
(fewer attention heads), LoRA on fewer layers, lower ranks. Each of the device's LoRA modules
is one slice of a reference module:

- **layer**: the device's layer ``l`` is the original layer ``source_layer`` (the pruning
  report in the manifest says which), and must be one of the reference's LoRA layers;
- **rank**: the device trains the first ``r <= R`` components (``A[:r]``, ``B[:, :r]``);
- **channels**: for ``q_proj``/``k_proj``/``v_proj`` its B rows are the rows of the attention
  heads it kept; for ``o_proj`` its A columns are the kept heads' columns. The hidden size is
  never pruned, so the other side is whole.

Channels are placed in two steps, because the two artifacts may both be pruned. Each
artifact's :class:`ModuleSlot` names the channels *of the unpruned model* its tensor rows or
columns hold (the pruning report records kept heads as indices into the original layer);
mapping a tier to the reference then looks each of the tier's channels up among the
reference's, giving positions in the reference tensors. For an unpruned reference those
positions are the channel numbers themselves. A tier that keeps a head the reference pruned
has no place in the global adapter and is refused (``ValueError``).

:func:`project` cuts the global adapter down to a tier (what the device starts from);
:func:`lift` puts a device's trained tensors back into reference shapes, zero outside its
slice, with a :class:`~coordinator.strategies.base.TrainedPart` per module saying which slice
that was (as indices into the reference tensors), so that strategies average each element
over the devices that trained it. With FlexLoRA's SVD-ordered global factors, the first
``r`` components are the rank-``r`` truncation, so the same slicing serves every strategy.

MLP targets on a width-pruned artifact are refused: the pruning report keeps the number of
MLP channels, not which ones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.strategies.base import TrainedPart

_LORA_KEY = re.compile(r"^(?P<prefix>.*\blayers\.(?P<layer>\d+)\.(?:self_attn|mlp)\.(?P<target>\w+))"
                       r"\.lora_(?P<factor>[AB])\.weight$")
_HEAD_ROWS = {"q_proj": "kept_heads", "k_proj": "kept_kv_heads", "v_proj": "kept_kv_heads"}
_HEAD_COLUMNS = {"o_proj": "kept_heads"}


@dataclass(frozen=True)
class ModuleSlot:
    """One LoRA module of an artifact, placed in the unpruned model."""

    prefix: str                        #: PEFT key prefix in this artifact's adapter
    source_layer: int                  #: the original (unpruned) layer it sits in
    target: str                        #: q_proj, v_proj, ...
    rank: int
    #: The unpruned model's output channels its B rows hold, in order; None: all of them.
    rows: tuple[int, ...] | None
    #: The unpruned model's input channels its A columns hold, in order; None: all of them.
    cols: tuple[int, ...] | None
    out_features: int                  #: B rows in this artifact
    in_features: int                   #: A columns in this artifact
    head_dim: int                      #: channels per attention head (to name heads in errors)


class AdapterLayout:
    """The LoRA modules of one artifact, keyed by (source layer, target)."""

    def __init__(self, slots: Mapping[tuple[int, str], ModuleSlot]):
        self.slots = dict(slots)

    @classmethod
    def from_manifest(cls, manifest: Mapping) -> "AdapterLayout":
        """Read the layout from an artifact manifest (its LoRA tensors and pruning report)."""
        pruned = manifest["pruned_model"]
        report = pruned.get("pruning") or {}
        layers = {int(entry["layer"]): entry for entry in report.get("layers", [])}
        head_dim = pruned.get("head_dim") or manifest["base_model"]["hidden_size"] // pruned["num_attention_heads"]
        width_pruned = report.get("method") == "width" and float(report.get("ratio", 0)) > 0
        shapes: dict[str, dict[str, list[int]]] = {}
        for spec in manifest["lora"]["tensors"]:
            match = _LORA_KEY.match(spec["name"])
            if match is None:
                raise ValueError(f"{spec['name']!r} is not a LoRA tensor key this coordinator understands")
            shapes.setdefault(match["prefix"], {})[match["factor"]] = [int(n) for n in spec["shape"]]
        slots = {}
        for prefix, factors in shapes.items():
            if set(factors) != {"A", "B"}:
                raise ValueError(f"the manifest lists only lora_{''.join(factors)} of {prefix}")
            match = _LORA_KEY.match(prefix + ".lora_A.weight")
            layer, target = int(match["layer"]), match["target"]
            entry = layers.get(layer, {"source_layer": layer})
            rows = cols = None
            if width_pruned:
                if target in _HEAD_ROWS:
                    rows = _head_channels(entry[_HEAD_ROWS[target]], head_dim)
                elif target in _HEAD_COLUMNS:
                    cols = _head_channels(entry[_HEAD_COLUMNS[target]], head_dim)
                else:
                    raise ValueError(f"LoRA on {target} of a width-pruned tier cannot be mapped to the reference "
                                     "model (which MLP channels were kept is not recorded); target attention "
                                     "projections or do not prune")
            (rank, in_features), out_features = factors["A"], factors["B"][0]
            source = int(entry["source_layer"])
            slots[(source, target)] = ModuleSlot(prefix, source, target, rank, rows, cols,
                                                 out_features, in_features, head_dim)
        return cls(slots)

    def same_as(self, other: "AdapterLayout") -> bool:
        return self.slots == other.slots


def _head_channels(heads, head_dim: int) -> tuple[int, ...]:
    return tuple(int(h) * head_dim + j for h in heads for j in range(head_dim))


def _reference_slot(reference: AdapterLayout, slot: ModuleSlot) -> ModuleSlot:
    ref = reference.slots.get((slot.source_layer, slot.target))
    if ref is None:
        raise ValueError(f"the tier trains {slot.target} of layer {slot.source_layer}, which the job's reference "
                         "adapter does not have: a tier's LoRA layers must be among the reference's")
    if slot.rank > ref.rank:
        raise ValueError(f"the tier's rank {slot.rank} on {slot.target} of layer {slot.source_layer} exceeds the "
                         f"reference rank {ref.rank}")
    return ref


def _positions(tier_channels: tuple[int, ...] | None, tier_count: int, ref_channels: tuple[int, ...] | None,
               ref_count: int, slot: ModuleSlot, side: str) -> np.ndarray | None:
    """Where the tier's channels on one side of a module sit in the reference tensor.

    Both sides name unpruned-model channels (None: all ``count`` of them, in order); the
    answer indexes the reference tensor's rows or columns, or is None when neither artifact
    pruned that side (the tier holds all of it).
    """
    if tier_channels is None and ref_channels is None:
        return None
    wanted = tuple(range(tier_count)) if tier_channels is None else tier_channels
    if ref_channels is None:
        outside = [channel for channel in wanted if not 0 <= channel < ref_count]
        if outside:
            raise ValueError(f"the tier's {slot.target} of layer {slot.source_layer} holds {side} {outside}, "
                             f"beyond the reference's {ref_count}")
        return np.asarray(wanted, dtype=np.int64)
    place = {channel: position for position, channel in enumerate(ref_channels)}
    missing = [channel for channel in wanted if channel not in place]
    if missing:
        heads = sorted({channel // slot.head_dim for channel in missing})
        raise ValueError(f"the tier keeps attention head(s) {heads} in the {side} of {slot.target} of layer "
                         f"{slot.source_layer}, which the job's width-pruned reference tier does not have: a "
                         "tier's kept heads must be among the reference's")
    return np.asarray([place[channel] for channel in wanted], dtype=np.int64)


def _slice(reference: AdapterLayout, slot: ModuleSlot) -> tuple[ModuleSlot, np.ndarray | None, np.ndarray | None]:
    """The reference module ``slot`` belongs to, and the reference rows and columns it holds."""
    ref = _reference_slot(reference, slot)
    rows = _positions(slot.rows, slot.out_features, ref.rows, ref.out_features, slot, "output rows")
    cols = _positions(slot.cols, slot.in_features, ref.cols, ref.in_features, slot, "input columns")
    return ref, rows, cols


def _index(positions: np.ndarray | None):
    return slice(None) if positions is None else positions


def project(global_tensors: Mapping[str, np.ndarray], reference: AdapterLayout,
            tier: AdapterLayout) -> dict[str, np.ndarray]:
    """The global adapter cut down to ``tier``'s modules, ranks and channels (float32 copies)."""
    out = {}
    for slot in tier.slots.values():
        ref, rows, cols = _slice(reference, slot)
        a = np.asarray(global_tensors[f"{ref.prefix}.lora_A.weight"])
        b = np.asarray(global_tensors[f"{ref.prefix}.lora_B.weight"])
        out[f"{slot.prefix}.lora_A.weight"] = np.ascontiguousarray(a[:slot.rank][:, _index(cols)], dtype=np.float32)
        out[f"{slot.prefix}.lora_B.weight"] = np.ascontiguousarray(b[_index(rows)][:, :slot.rank], dtype=np.float32)
    return out


def lift(tier_tensors: Mapping[str, np.ndarray], tier: AdapterLayout, reference: AdapterLayout,
         reference_shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], dict[str, TrainedPart]]:
    """A device's tensors in reference shapes (zero outside its slice) and the slice per module
    (rows and columns as indices into the reference tensors)."""
    lifted = {key: np.zeros(shape, dtype=np.float32) for key, shape in reference_shapes.items()}
    trained = {}
    for slot in tier.slots.values():
        ref, rows, cols = _slice(reference, slot)
        a_key, b_key = f"{ref.prefix}.lora_A.weight", f"{ref.prefix}.lora_B.weight"
        a_block = lifted[a_key][:slot.rank]
        a_block[:, _index(cols)] = tier_tensors[f"{slot.prefix}.lora_A.weight"]
        b_block = lifted[b_key][:, :slot.rank]
        b_block[_index(rows), :] = tier_tensors[f"{slot.prefix}.lora_B.weight"]
        trained[ref.prefix] = TrainedPart(rank=slot.rank, rows=rows, cols=cols)
    return lifted, trained
