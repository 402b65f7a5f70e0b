"""Content-addressed blobs on disk: artifacts, global adapters and device updates.

A blob's name is the sha256 of its bytes (``<root>/<first two hex>/<sha256>``), so a blob is
immutable, deduplicated, and verifiable by whoever downloads it. Writing is crash-safe:

1. write to a temporary file under ``<root>/tmp/`` (same file system) while hashing;
2. ``fsync`` the file: its bytes are on disk;
3. ``rename`` it to its content address (atomic: readers see the whole blob or none);
4. ``fsync`` the directory: the new name is on disk too.

Steps 1-2 (:meth:`BlobStore.stage`) can run before the caller has decided to keep the blob;
steps 3-4 (:meth:`StagedBlob.commit`) make it visible. The upload path stages, decides under
the round lock, commits the blob, then commits the database row that names it, so a
database row never refers to a blob that is not durably on disk. A crash between the blob
and the row leaves an unreferenced blob (harmless; it is re-used if the same bytes arrive
again), never a row without its bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_TMP = "tmp"
#: Staging files older than this at startup belong to a process that died mid-write.
_STALE_TMP_S = 3600.0


def is_sha256_hex(text: str) -> bool:
    """True for a lowercase 64-character hex string (what blob names are)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename or a new file into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


class StagedBlob:
    """Bytes durably written to a temporary file, not yet visible under their content address."""

    def __init__(self, store: "BlobStore", tmp_path: Path, sha256: str, size: int):
        self.store, self.tmp_path, self.sha256, self.size = store, tmp_path, sha256, size
        self.created = False

    @property
    def ref(self) -> BlobRef:
        return BlobRef(self.sha256, self.size)

    def commit(self) -> BlobRef:
        """Move the staged bytes to their content address (no-op if that blob already exists)."""
        target = self.store.path(self.sha256)
        if target.exists():
            self.discard()
            return self.ref
        shard = target.parent
        if not shard.exists():
            shard.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.store.root)
        os.replace(self.tmp_path, target)
        fsync_dir(shard)
        self.created = True
        return self.ref

    def discard(self) -> None:
        """Forget the staged bytes (idempotent)."""
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "StagedBlob":
        return self

    def __exit__(self, *exc) -> None:
        # Committed blobs were renamed away; anything left is an abandoned stage.
        self.discard()


class BlobStore:
    """A directory of immutable blobs named by their sha256."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp_dir = self.root / _TMP
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def remove_stale_staging(self, older_than_s: float = _STALE_TMP_S) -> int:
        """Delete staging files left by a process that died mid-write; returns how many."""
        removed = 0
        now = time.time()
        for path in self.tmp_dir.iterdir():
            try:
                if now - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def path(self, sha256: str) -> Path:
        """Where blob ``sha256`` lives (whether or not it exists)."""
        if not is_sha256_hex(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return is_sha256_hex(sha256) and self.path(sha256).is_file()

    def read_bytes(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def blob_files(self) -> list[Path]:
        """Every stored blob (not staging files): what tests count."""
        return sorted(p for p in self.root.glob("??/*") if p.is_file())

    def stage(self, data: bytes) -> StagedBlob:
        """Write ``data`` to a durable temporary file (steps 1-2); ``commit()`` publishes it."""
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedBlob(self, Path(name), hashlib.sha256(data).hexdigest(), len(data))

    def stage_file(self, source: Path) -> StagedBlob:
        """Copy ``source`` into a durable temporary file, hashing as it goes."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="blob-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedBlob(self, Path(name), digest.hexdigest(), size)

    def put_bytes(self, data: bytes) -> BlobRef:
        """Stage and commit ``data`` in one go."""
        with self.stage(data) as staged:
            return staged.commit()

    def put_file(self, source: Path) -> BlobRef:
        """Stage and commit a copy of ``source`` in one go."""
        with self.stage_file(source) as staged:
            return staged.commit()
