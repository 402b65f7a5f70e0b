"""Frozen-prefix activation cache: run the frozen bottom of the model once per example.

When LoRA sits only in the last k layers, the hidden state entering the lowest LoRA layer
depends on nothing that training changes: only on the example's tokens and the frozen base.
A device computes it once with the artifact's prefix program (``prefix.pte``), keeps it, and
trains the top program on it for every later step, epoch and round, until the base model
changes. The key is (sha256 of ``prefix.pte``, sha256 of the example's token ids): a new base
or tier ships a new prefix program and so starts a new cache.

Memory: one example costs ``seq x hidden x 4`` bytes (SmolLM2 at seq 128: 288 KiB). Entries
stay in memory up to a budget; beyond it they go to ``cache_dir`` on disk (a phone's flash is
larger than its RAM) and are read back per step. Without a ``cache_dir`` everything stays in
memory.

Lifetime: a device keeps its cache object from task to task (``fleet.device.DeviceAgent``);
a cache made per task would lose everything it held in memory and recompute it next round.

Sharing (simulated devices only): devices on one host that train the same base program
compute the same prefix outputs for the same token ids, so they may share one cache directory.
A shared cache is *write-through* (every entry also goes to disk, renamed into place
atomically, so another process never reads half a file) and a lookup that misses memory reads
the disk, so worker processes share through the directory; within one process,
:func:`shared_prefix_cache` hands every device the same object for a (directory, version),
so the memory budget is per process. A real phone's cache is its own.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class PrefixCacheStats:
    """What the cache did: examples computed and served, time in the prefix program, bytes held."""

    computed: int = 0
    hits: int = 0
    prefix_seconds: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0


class PrefixCache:
    """Hidden states entering the lowest LoRA layer, per example, for one prefix program."""

    DEFAULT_MEMORY_BYTES = 256 << 20

    def __init__(self, program_path: Path, version: str, cache_dir: Path | None = None,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, write_through: bool = False):
        if write_through and cache_dir is None:
            raise ValueError("a write-through prefix cache needs a cache_dir")
        self.program_path = Path(program_path)
        self.version = version
        self.disk_dir = Path(cache_dir) / version[:32] if cache_dir is not None else None
        self.memory_budget = memory_bytes
        #: every entry also goes to disk, where other processes sharing ``cache_dir`` find it
        self.write_through = write_through
        self.stats = PrefixCacheStats()
        self._memory: dict[str, torch.Tensor] = {}
        self._program = None

    @staticmethod
    def version_of(manifest: dict) -> str:
        """The cache version an artifact calls for: its prefix program's sha256 (a new base, a new cache)."""
        return manifest["files"][manifest["prefix"]["file"]]["sha256"]

    @classmethod
    def for_artifact(cls, artifact_dir: Path, manifest: dict, cache_dir: Path | None = None,
                     memory_bytes: int = DEFAULT_MEMORY_BYTES, write_through: bool = False) -> "PrefixCache":
        """The cache for an artifact whose manifest has a ``prefix`` section (versioned by its sha256)."""
        return cls(Path(artifact_dir) / manifest["prefix"]["file"], cls.version_of(manifest), cache_dir,
                   memory_bytes, write_through)

    def matches(self, manifest: dict) -> bool:
        """Whether this cache holds outputs of the artifact's prefix program (same sha256)."""
        return bool(manifest.get("prefix")) and self.version == self.version_of(manifest)

    @staticmethod
    def example_key(ids_row: torch.Tensor) -> str:
        return hashlib.sha256(ids_row.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()

    # --- lookups -----------------------------------------------------------------------------

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The prefix output for a [batch, seq] batch of token ids, computing only what is missing."""
        keys = [self.example_key(row) for row in ids]
        rows = [self._lookup(key) for key in keys]
        if any(row is None for row in rows):
            computed = self._run_prefix(ids)
            for index, key in enumerate(keys):
                if rows[index] is None:
                    rows[index] = self._store(key, computed[index])
                    self.stats.computed += 1
        else:
            self.stats.hits += len(keys)
        return torch.stack(rows)

    def fill(self, batches_of_ids: Iterable[torch.Tensor]) -> None:
        """Compute and keep the prefix output of every example in these batches."""
        for ids in batches_of_ids:
            self.hidden(ids)

    def __contains__(self, ids_row: torch.Tensor) -> bool:
        return self._lookup(self.example_key(ids_row)) is not None

    def _lookup(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            return self._memory[key]
        if self.disk_dir is not None:
            path = self.disk_dir / f"{key}.npy"
            if path.is_file():
                row = torch.from_numpy(np.load(path))
                # Written by another process (shared) or an earlier run: keep it in memory while
                # the budget allows, so later steps do not read the file again.
                self._keep_in_memory(key, row)
                return row
        return None

    def _keep_in_memory(self, key: str, row: torch.Tensor) -> bool:
        size = row.numel() * row.element_size()
        if self.disk_dir is not None and self.stats.memory_bytes + size > self.memory_budget:
            return False
        self._memory[key] = row
        self.stats.memory_bytes += size
        return True

    def _store(self, key: str, row: torch.Tensor) -> torch.Tensor:
        row = row.detach().clone().contiguous()
        if self._keep_in_memory(key, row) and not self.write_through:
            return row
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        final = self.disk_dir / f"{key}.npy"
        partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
        with open(partial, "wb") as f:
            np.save(f, row.numpy())
        os.replace(partial, final)     # a crash never leaves a truncated entry under its real name
        self.stats.disk_bytes += final.stat().st_size
        return row

    # --- the prefix program ------------------------------------------------------------------

    def _run_prefix(self, ids: torch.Tensor) -> torch.Tensor:
        if self._program is None:
            from executorch.extension.pybindings.portable_lib import _load_for_executorch

            self._program = _load_for_executorch(str(self.program_path))
        start = time.perf_counter()
        hidden = self._program.forward((ids,))[0].clone()   # the output lives in the runtime's arena
        self.stats.prefix_seconds += time.perf_counter() - start
        return hidden

    def release_program(self) -> None:
        """Drop the loaded prefix program (its packed weights); it is reloaded if ever needed again."""
        self._program = None


#: This process's shared caches by (resolved directory, version): one object per pair, so that
#: simulated devices served by one worker share its memory part as well as the directory.
_SHARED: dict[tuple[str, str], PrefixCache] = {}


def shared_prefix_cache(artifact_dir: Path, manifest: dict, cache_dir: Path,
                        memory_bytes: int = PrefixCache.DEFAULT_MEMORY_BYTES) -> PrefixCache:
    """The write-through cache this process shares for ``cache_dir`` and the artifact's prefix version.

    The first caller's ``memory_bytes`` sizes it. Its ``program_path`` is the first caller's
    copy of the prefix program, which is every caller's (same sha256).
    """
    key = (str(Path(cache_dir).resolve()), PrefixCache.version_of(manifest))
    if key not in _SHARED:
        _SHARED[key] = PrefixCache.for_artifact(artifact_dir, manifest, cache_dir, memory_bytes, write_through=True)
    return _SHARED[key]
