"""Feature merging: the label mix of the batch the server assembles from several workers.

In MergeSFL the server concatenates the cut-layer features that several workers sent for one
step into a single batch and runs the top of the model once on it. Each worker's data is
non-IID (a phone's text is about a few topics), so its own batch is skewed; the merged batch
mixes the workers' skews, and with the right workers and batch sizes it approaches the fleet's
overall label distribution: one top step on a nearly IID batch instead of several on skewed
ones. This module measures that: the merged batch's label distribution and its KL divergence
from the global one. What to merge (the batch sizes) is ``batch_regulation``'s decision.

Label distributions come from the labels the workers send with their features (the server
needs them for the loss), counted by the server, never from what a device claims about its data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Added to every class's probability before the divergence, so that a class the merged batch
#: lacks costs a large but finite amount.
SMOOTHING = 1e-3


def normalized(histogram: Mapping[str, float]) -> dict[str, float]:
    """``histogram`` (counts or weights per label, >= 0, some > 0) scaled to sum to 1."""
    total = sum(histogram.values())
    if any(v < 0 or not math.isfinite(v) for v in histogram.values()) or total <= 0:
        raise ValueError(f"a label histogram needs non-negative counts, some positive: {dict(histogram)}")
    return {label: value / total for label, value in histogram.items()}


def merged_distribution(batch_sizes: Mapping[str, int], distributions: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The expected label distribution of a batch merged from ``batch_sizes[w]`` examples of each
    worker ``w``, each drawn from that worker's ``distributions[w]``."""
    mix: dict[str, float] = {}
    total = 0
    for worker, size in batch_sizes.items():
        if size <= 0:
            continue
        total += size
        for label, p in normalized(distributions[worker]).items():
            mix[label] = mix.get(label, 0.0) + size * p
    if total == 0:
        return {}
    return {label: value / total for label, value in mix.items()}


def kl_from_global(mix: Mapping[str, float], global_distribution: Mapping[str, float]) -> float:
    """KL(global || mix), smoothed: how badly the merged batch covers the fleet's labels (a class
    the fleet has and the batch lacks costs most, which is what skews the top's update)."""
    target = normalized(global_distribution)
    labels = set(target) | set(mix)
    smooth = {label: (mix.get(label, 0.0) + SMOOTHING) / (1 + SMOOTHING * len(labels)) for label in labels}
    return sum(p * math.log(p / smooth[label]) for label, p in target.items() if p > 0)
