"""Train / held-out splits decided by content, so that no text is on both sides.

A split by a hash of each example's *id* puts byte-identical texts on both sides whenever a
corpus holds a text twice under two names (BBC News has 25 such held-out articles, chatterbot
180 held-out pairs with a training twin), and a held-out score then partly measures
memorization. Here the side is decided by a hash of the **normalized content**
(whitespace collapsed, case folded: :func:`normalized`), so identical texts always land on the
same side, and exact duplicates inside a side are collapsed to their first occurrence in the
corpus's stable order. A task may group by a coarser key than its text (chatterbot groups
every answer of one question), which keeps near-identical examples together too.

The buckets (80% train, 5% calibration, 15% held-out) are a pure function of the content,
so every machine makes the same split whatever order files are listed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: (upper bound of the hash bucket, split), buckets 0..99.
BUCKETS = ((80, "train"), (85, "calibration"), (100, "heldout"))
SPLITS = tuple(name for _, name in BUCKETS)


def normalized(text: str) -> str:
    """The text as a reader compares texts: runs of whitespace made one space, case folded."""
    return " ".join(text.split()).casefold()


def content_key(text: str) -> str:
    """sha256 of the normalized text: equal for texts that differ only in spacing or case."""
    return hashlib.sha256(normalized(text).encode("utf-8")).hexdigest()


def split_of_key(key: str) -> str:
    """The split a content key falls in (80% train, 5% calibration, 15% held-out)."""
    bucket = int(key[:8], 16) % 100
    for bound, name in BUCKETS:
        if bucket < bound:
            return name
    raise AssertionError("unreachable: buckets cover 0..99")


@dataclass(frozen=True)
class SplitResult:
    """The items of one split and how many exact duplicates were dropped from it."""

    items: list
    duplicates_dropped: int


def content_split(items: Iterable[T], split: str, text_of: Callable[[T], str],
                  group_of: Callable[[T], str] | None = None,
                  assign: Callable[[str], str] = split_of_key) -> SplitResult:
    """The ``items`` (in their stable order) whose group falls in ``split``, duplicates collapsed.

    ``text_of``: what the model sees of an item (two items with the same normalized text are
    duplicates: the first is kept). ``group_of``: the text that decides the side (default: the
    item's text), so that a whole group shares one side. ``assign`` maps a group's content key
    to a split name (default :func:`split_of_key`; a task may merge buckets).
    """
    kept, seen, dropped = [], set(), 0
    for item in items:
        group = content_key((group_of or text_of)(item))
        if assign(group) != split:
            continue
        key = content_key(text_of(item))
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(item)
    return SplitResult(kept, dropped)
