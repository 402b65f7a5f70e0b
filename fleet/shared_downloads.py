"""One host copy of each artifact file for simulated devices that fetch the same artifact.

Twenty simulated devices on one host each download, hash and write the same program (770 MB
for SmolLM2 in fp32) on their first task: minutes of host time per run that a real fleet spends
on twenty phones. With a shared directory, the first device's download (verified against the
sha256 the task named, as every download is) is linked in under that sha256, and later devices
link it from there instead of fetching it again.

Sharing moves host time only. A device that takes a file from the shared copy still counts its
bytes and its request as downloaded, so what it reports to the coordinator and what its virtual
clock charges (bytes over its own link, a latency per file) are what they would be without
sharing. A real phone never shares.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class SharedDownloads:
    """A content-addressed directory of verified files, written by any device process on the host."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256

    def link_into(self, sha256: str, dest: Path) -> int | None:
        """Place the shared copy of ``sha256`` at ``dest``; its size, or None if no copy is kept."""
        source = self._path(sha256)
        if not source.is_file():
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = dest.with_name(dest.name + f".shared-{os.getpid()}")
        _link_or_copy(source, staging)
        os.replace(staging, dest)
        return dest.stat().st_size

    def keep(self, sha256: str, downloaded: Path) -> None:
        """Keep a verified download for the other devices (atomically: a reader never sees half a file)."""
        target = self._path(sha256)
        if target.is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(target.name + f".part-{os.getpid()}")
        _link_or_copy(downloaded, staging)
        os.replace(staging, target)


def is_sha256(text: object) -> bool:
    """True for a lowercase hex sha256 digest: the only names the shared directory holds."""
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _link_or_copy(source: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)           # same filesystem: no bytes copied
    except OSError:
        shutil.copyfile(source, dest)
