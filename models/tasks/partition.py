"""Split a task's training examples over N devices: IID, or non-IID by a Dirichlet over labels.

Federated results depend heavily on how unequal the devices' data are, so the split is part
of every experiment's description and is reproducible from ``(scheme, alpha, seed)`` alone.
Dirichlet(alpha) by label is the usual non-IID benchmark: for every label, the share of its
examples each device gets is drawn from Dir(alpha, ..., alpha); small alpha gives devices a
few dominant labels, large alpha approaches IID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SCHEMES = ("iid", "dirichlet")
_MAX_DRAWS = 1000


@dataclass(frozen=True)
class PartitionSpec:
    """How examples are dealt to devices; ``parse`` reads ``iid`` or ``dirichlet:0.5``."""

    scheme: str = "iid"
    alpha: float = 0.5
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> "PartitionSpec":
        scheme, _, alpha = text.partition(":")
        if scheme not in SCHEMES:
            raise ValueError(f"unknown partition {text!r}; use 'iid' or 'dirichlet:ALPHA' (e.g. dirichlet:0.5)")
        if scheme == "iid":
            if alpha:
                raise ValueError("the iid partition takes no parameter")
            return cls("iid", 0.0, seed)
        try:
            value = float(alpha) if alpha else 0.5
        except ValueError:
            raise ValueError(f"dirichlet alpha must be a number, got {alpha!r}") from None
        if not value > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {value}")
        return cls("dirichlet", value, seed)

    def __str__(self) -> str:
        return "iid" if self.scheme == "iid" else f"dirichlet:{self.alpha:g}"


def partition(labels: Sequence[str], num_devices: int, spec: PartitionSpec, min_size: int = 1) -> list[list[int]]:
    """Indices of ``labels`` for each of ``num_devices`` devices (disjoint, covering all).

    Every device gets at least ``min_size`` examples; a Dirichlet draw that leaves one with
    fewer is redrawn (from the same seeded generator, so the result stays reproducible).
    """
    if num_devices < 1:
        raise ValueError(f"need at least one device, got {num_devices}")
    if len(labels) < num_devices * min_size:
        raise ValueError(f"{len(labels)} examples cannot give {num_devices} devices {min_size} each")
    rng = np.random.default_rng(spec.seed)
    if spec.scheme == "iid":
        order = rng.permutation(len(labels))
        return [sorted(part.tolist()) for part in np.array_split(order, num_devices)]
    if spec.scheme != "dirichlet":
        raise ValueError(f"unknown partition scheme {spec.scheme!r}; use one of {SCHEMES}")
    classes = sorted(set(labels))
    members = {c: np.array([i for i, label in enumerate(labels) if label == c]) for c in classes}
    for _ in range(_MAX_DRAWS):
        shards: list[list[int]] = [[] for _ in range(num_devices)]
        for c in classes:
            indices = rng.permutation(members[c])
            shares = rng.dirichlet(np.full(num_devices, spec.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for device, part in enumerate(np.split(indices, cuts)):
                shards[device].extend(part.tolist())
        if min(map(len, shards)) >= min_size:
            return [sorted(shard) for shard in shards]
    raise ValueError(f"no Dirichlet({spec.alpha}) draw in {_MAX_DRAWS} gave every one of {num_devices} devices "
                     f"{min_size} examples; use a larger alpha or fewer devices")


def shard(examples: Sequence, labels_of, num_devices: int, index: int, spec: PartitionSpec, min_size: int = 1) -> list:
    """The examples device ``index`` (0-based) of ``num_devices`` holds."""
    if not 0 <= index < num_devices:
        raise ValueError(f"shard index {index} is outside 0..{num_devices - 1}")
    parts = partition([labels_of(e) for e in examples], num_devices, spec, min_size)
    return [examples[i] for i in parts[index]]


def label_histogram(examples: Sequence, labels_of) -> dict[str, int]:
    """How many examples of each label (for reports on how skewed a shard is)."""
    counts: dict[str, int] = {}
    for example in examples:
        counts[labels_of(example)] = counts.get(labels_of(example), 0) + 1
    return dict(sorted(counts.items()))
