"""``manifest.json``: everything a device (or the coordinator) must know to use an artifact.

A device reads the manifest before anything else: which files to fetch and their sha256,
the fixed input shapes and dtypes the program was compiled for, how to tokenize and pad,
which LoRA tensors it trains (names and shapes, for validating uploads), and the training
hyper-parameters. The schema is versioned; readers refuse versions they do not know.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file (artifacts reach hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(root: Path, device_files: set[str]) -> dict[str, dict]:
    """sha256, size and audience of every file under ``root`` except the manifest itself.

    ``device_files`` names the files a phone downloads; the rest (e.g. the pruned base in
    safetensors, for server-side evaluation) stay on the coordinator.
    """
    described = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_FILE:
            continue
        described[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size,
                          "device": rel in device_files or rel.split("/")[0] in device_files}
    return described


def program_batch_shape(data: dict) -> tuple[int, int]:
    """The fixed [batch, seq] of token ids a device feeds an artifact (whether or not it has a prefix program)."""
    return int(data["tier"]["batch"]), int(data["tier"]["seq"])


def program_loss_positions(data: dict) -> int | None:
    """The program's label-position head K (``program.loss_positions``), or ``None``: the head at
    every position (also for manifests written before the field existed)."""
    value = (data.get("program") or {}).get("loss_positions")
    return None if value is None else int(value)


def loss_output(loss_positions: int | None) -> dict:
    """The manifest's description of a training program's ``loss`` output (both formats)."""
    meaning = "mean next-token cross-entropy over labels != ignore_index"
    if loss_positions is not None:
        meaning += (f"; the LM head runs at the first {loss_positions} labelled positions of each row only, so a "
                    f"batch with a row labelled at more than {loss_positions} positions must be refused "
                    "before the step (the program cannot tell)")
    return {"name": "loss", "shape": [], "dtype": "float32", "meaning": meaning}


@dataclass
class Manifest:
    """A parsed manifest; ``data`` is the JSON object, the properties are the parts code uses."""

    data: dict

    @property
    def tier(self) -> dict:
        return self.data["tier"]

    @property
    def files(self) -> dict[str, dict]:
        return self.data["files"]

    @property
    def lora_tensors(self) -> list[dict]:
        return self.data["lora"]["tensors"]

    @property
    def inputs(self) -> list[dict]:
        return self.data["program"]["inputs"]

    def verify_files(self, root: Path) -> list[str]:
        """Names of files under ``root`` that are missing or whose size or sha256 differ."""
        bad = []
        for rel, meta in self.files.items():
            path = Path(root) / rel
            if not path.is_file() or path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
                bad.append(rel)
        return bad


def write_manifest(root: Path, data: dict) -> Path:
    """Write ``data`` (already containing ``files``) as the manifest of ``root``."""
    data = {"schema_version": SCHEMA_VERSION, **data}
    path = Path(root) / MANIFEST_FILE
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(root_or_file: Path) -> Manifest:
    """Parse a manifest, refusing unknown schema versions with a message that says what to do."""
    path = Path(root_or_file)
    if path.is_dir():
        path = path / MANIFEST_FILE
    data = json.loads(path.read_text())
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(f"{path}: manifest schema version {version!r} is not supported by this "
                         f"PocketTune (expects {SCHEMA_VERSION}); re-export the artifact or upgrade")
    return Manifest(data)
