"""Deriving and comparing tiers: sub-tiers of a reference tier, and which tier nests in which.

A job names a *reference tier*: the largest configuration (LoRA on the last ``K`` layers at
rank ``R``, no pruning). Devices of unequal speed train *sub-tiers* of it: a pruning ratio at
least the reference's, LoRA on the last ``k <= K`` layers, each layer's rank at most the
reference rank of the same layer (:func:`is_sub_tier`). A sub-tier's adapter maps onto the
reference adapter, which is what lets heterogeneous updates be aggregated.

Tiers travel as ``Tier.to_dict()`` dicts (in jobs, manifests and artifact keys), so the
operations here take and return dicts, always normalized: two spellings of one tier must give
one dict, or the same tier would be exported twice under two artifact keys. Kept apart from
:mod:`models.tier`, which *describes* and validates one tier, because this is the algebra the
schedulers build on; it is still torch-bound through :mod:`models.tier` (whose LoRA and pruning
imports load torch).
"""

from __future__ import annotations

import json

from models.lora import rank_schedule
from models.tier import Tier


def normalized_tier(tier: dict) -> dict:
    """``tier`` as ``Tier.to_dict()`` writes it (every field present, lists for tuples)."""
    return Tier.from_dict(tier).to_dict()


def tier_ranks(tier: dict) -> tuple[int, ...]:
    """Rank of each LoRA layer of ``tier``, bottom to top."""
    t = Tier.from_dict(tier)
    return rank_schedule(t.lora_rank, t.lora_layers, t.rank_pattern)


def sub_tier(reference: dict, ranks: tuple[int, ...], prune_ratio: float | None = None) -> dict:
    """The tier that is ``reference`` with LoRA on the last ``len(ranks)`` layers at ``ranks``.

    A single rank is written as a ``uniform`` pattern and anything else as an explicit tuple
    (with ``lora_rank`` its top layer's rank), so that one layout always gives the same dict
    and so the same artifact. ``prune_ratio`` replaces the reference's when given.
    """
    ranks = tuple(int(r) for r in ranks)
    fields = dict(normalized_tier(reference))
    fields["lora_layers"] = len(ranks)
    if len(set(ranks)) == 1:
        fields["lora_rank"], fields["rank_pattern"] = ranks[0], "uniform"
    else:
        fields["lora_rank"], fields["rank_pattern"] = ranks[-1], list(ranks)
    if prune_ratio is not None:
        fields["prune_ratio"] = float(prune_ratio)
    return normalized_tier(fields)


def is_sub_tier(tier: dict, reference: dict) -> bool:
    """Whether ``tier``'s adapter maps onto ``reference``'s and its artifact is comparable.

    Nesting: pruning ratio at least the reference's (same method), LoRA depth at most the
    reference's, targets a subset, and each LoRA layer's rank at most the reference rank of
    the same layer (layers counted from the top, where both put LoRA). Equal: base
    quantization, batch, sequence length and kernels, which decide what a training step is.
    Training hyper-parameters and prefix caching are free: they change how a step runs, not
    what the adapter is. An invalid tier is never a sub-tier.
    """
    try:
        sub, ref = Tier.from_dict(tier), Tier.from_dict(reference)
        sub.validate()
        ref.validate()
        sub_ranks = tier_ranks(tier)
        ref_ranks = tier_ranks(reference)
    except (TypeError, ValueError, KeyError):
        return False
    if (sub.quantize, sub.batch, sub.seq, sub.kernels, sub.prune_method) != \
            (ref.quantize, ref.batch, ref.seq, ref.kernels, ref.prune_method):
        return False
    if sub.prune_ratio < ref.prune_ratio or sub.lora_layers > ref.lora_layers:
        return False
    if not set(sub.lora_targets) <= set(ref.lora_targets):
        return False
    top_of_reference = ref_ranks[len(ref_ranks) - len(sub_ranks):]
    return all(s <= r for s, r in zip(sub_ranks, top_of_reference))


def unique_tiers(tiers) -> list[dict]:
    """``tiers`` without repeats (compared as normalized dicts), first occurrence kept."""
    seen, out = set(), []
    for tier in tiers:
        tier = normalized_tier(tier)
        key = json.dumps(tier, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(tier)
    return out
