"""A device's local data: a shard of a named task, or the user's own text file.

Only the device ever reads these examples; what leaves it is the adapter it trained on them.
Which examples a round trains on is a pure function of (shard, round, steps, batch), so a
test (or an eager-PyTorch reference) can reproduce exactly what a device did.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from models.tasks import Example, PartitionSpec, Task, TextFileTask, get_task, label_histogram, shard


@dataclass
class LocalData:
    task: Task
    examples: list[Example]
    description: str

    @classmethod
    def from_task(cls, name: str, index: int, num_shards: int, spec: PartitionSpec) -> "LocalData":
        """Shard ``index`` (0-based) of ``num_shards`` of task ``name``'s training split."""
        task = get_task(name)
        examples = shard(task.examples("train"), lambda e: e.label, num_shards, index, spec)
        # Corpora list examples grouped by label; a round's slice of them must not be.
        random.Random(f"{spec.seed}/{index}").shuffle(examples)
        histogram = label_histogram(examples, lambda e: e.label)
        return cls(task, examples, f"{name} shard {index + 1}/{num_shards} ({spec}, seed {spec.seed}): "
                                   f"{len(examples)} examples {histogram}")

    @classmethod
    def from_file(cls, path: Path) -> "LocalData":
        task = TextFileTask(path)
        examples = task.examples("train")
        random.Random(str(path)).shuffle(examples)     # a notes file is in time order; SGD wants it mixed
        return cls(task, examples, f"{path}: {len(examples)} paragraphs")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1-based, as people count devices) -> (I-1, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N, e.g. 3/10; got {text!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text}: I must be between 1 and N")
    return index - 1, count


def round_examples(examples: list, round_number: int, steps: int, batch: int,
                   sampling: str = "sequential", label_of: Callable[[object], object] = attrgetter("label")) -> list:
    """The ``steps * batch`` examples a device trains on in ``round_number`` (1-based).

    ``sequential``: rounds walk through the shard in order and wrap around, so a device sees all
    its data before seeing any example twice, and a small shard simply repeats.

    ``class_balanced``: the walk takes the device's classes (``label_of`` each example) in turn,
    in sorted order, and each class's examples in shard order with wrap-around; the position
    carries on across rounds, as the sequential walk's does. A device with 30 "sport" articles
    and 2 "tech" ones trains on them half and half: the minority examples repeat, and no class
    the device lacks is invented. ``ValueError`` for an unlabelled example.
    """
    if not examples:
        raise ValueError("this device has no examples")
    need = steps * batch
    if sampling == "sequential":
        start = ((round_number - 1) * need) % len(examples)
        return [examples[(start + i) % len(examples)] for i in range(need)]
    if sampling != "class_balanced":
        raise ValueError(f"unknown local sampling {sampling!r}; use sequential or class_balanced")
    by_class: dict = {}
    for example in examples:
        label = label_of(example)
        if label is None:
            raise ValueError("class_balanced sampling needs labelled examples; this device's data has none")
        by_class.setdefault(label, []).append(example)
    queues = [by_class[label] for label in sorted(by_class)]
    start = (round_number - 1) * need
    return [queues[i % len(queues)][(i // len(queues)) % len(queues[i % len(queues)])]
            for i in range(start, start + need)]
