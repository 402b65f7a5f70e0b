"""What an artifact is: its content key, its export cache, and what requests need to know of it.

Artifacts are built through ``export/`` once per (model, tier, format) and stored as blobs;
the background thread that does it is ``services/artifact_worker.py``.

The cache key is the sha256 of the model name and the *compiled* part of the tier (pruning,
LoRA layout, quantization, batch, sequence length): the training hyper-parameters (learning
rate, local steps) are not compiled into the program, so jobs that differ only in them share
one artifact, and devices get the job's values in each task's ``train`` section instead.

Two layers of caching:

- the **artifact cache** directory (``--artifact-cache``, default ``<instance>/artifacts``)
  holds one exported directory per key, written all-or-nothing by ``export_artifact``; it
  can be shared by several coordinators (or test servers) so that an export happens once;
- the **database** records, per key, the manifest and every file's blob, so a second job
  with the same key reuses the artifact without touching the cache directory.

A recorded artifact never changes, so what requests read of it (:class:`ArtifactInfo`: its
files, the LoRA tensors an update must have, the RAM it needs) is loaded once per process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlalchemy import select

from coordinator.models import Artifact, ArtifactFile
from coordinator.services.adapter_mapping import AdapterLayout
from coordinator.services.heavy_imports import ensure_heavy_imports
from coordinator.services.validation import max_update_bytes
from export.formats import DEFAULT_FORMAT, get_format

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
INITIAL_ADAPTER_CONFIG = "initial_adapter/adapter_config.json"
INITIAL_ADAPTER_WEIGHTS = "initial_adapter/adapter_model.safetensors"
ADAPTER_PTD = "lora.ptd"
_KEY_VERSION = 1
#: Inside the cache: compiled program parts several tiers share (export_artifact's program_cache).
PROGRAM_CACHE_DIR = "programs"


def compiled_tier(tier: dict) -> dict:
    """The part of a tier dict that changes the compiled program (everything but ``train``)."""
    return {key: value for key, value in tier.items() if key != "train"}


def artifact_key(model: str, tier: dict, artifact_format: str = DEFAULT_FORMAT) -> str:
    """The content key of the artifact for ``model`` at ``tier`` (a ``Tier.to_dict()``) in a format.

    Whatever else a format compiles in (ONNX Runtime's optimizer settings; ExecuTorch takes
    them at run time) is part of the key, as the format says
    (:meth:`~export.formats.base.ArtifactFormat.artifact_key_extras`). ``ValueError``
    (:class:`~export.formats.UnknownFormatError`) for a format no plug-in registered.
    """
    extras = get_format(artifact_format).artifact_key_extras(tier)
    description = {"version": _KEY_VERSION, "format": artifact_format, "model": model,
                   "tier": compiled_tier(tier), **extras}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ArtifactInfo:
    """What requests need to know about an artifact (immutable, so cached per process)."""

    artifact: Artifact
    files: list[ArtifactFile]
    format: str
    tensors: list[dict]
    required_ram_mb: int
    max_update_bytes: int

    @cached_property
    def layout(self) -> AdapterLayout:
        """The artifact's LoRA layout, placed in the unpruned model (only tiers other than the
        job's need it: cutting a start adapter to them and lifting their updates back)."""
        return AdapterLayout.from_manifest(self.artifact.manifest)


def load_artifact_info(session, artifact_id: int) -> ArtifactInfo:
    """Read recorded artifact ``artifact_id`` and its files into an :class:`ArtifactInfo`."""
    artifact = session.get(Artifact, artifact_id)
    files = list(session.scalars(select(ArtifactFile).where(ArtifactFile.artifact_id == artifact_id)))
    tensors = artifact.manifest["lora"]["tensors"]
    return ArtifactInfo(artifact=artifact, files=files, format=artifact.format, tensors=tensors,
                        required_ram_mb=get_format(artifact.format).required_ram_mb(artifact.manifest),
                        max_update_bytes=max_update_bytes(tensors))


class ArtifactCache:
    """Exported artifact directories, one per key, under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    def directory(self, key: str) -> Path:
        return self.root / key

    def ensure(self, model: str, tier_dict: dict, artifact_format: str = DEFAULT_FORMAT,
               adapter_tensors=None) -> Path:
        """The artifact directory for (model, tier, format), exporting it if the cache does not have it.

        ``adapter_tensors(sha256) -> tensors``: how to read a stored adapter, for a tier pruned by
        a tuned adapter's importance (``prune_importance_adapter``)."""
        from export.manifest import read_manifest

        key = artifact_key(model, tier_dict, artifact_format)
        directory = self.directory(key)
        with self._lock:  # one export at a time per process: exports take all the CPU anyway
            if (directory / MANIFEST_FILE).is_file():
                manifest = read_manifest(directory)
                self._check_entry(directory, manifest, model, tier_dict, artifact_format)
                log.info("artifact %s: using cached export %s", key[:12], directory)
                return directory
            ensure_heavy_imports()
            from export.pipeline import export_artifact
            from models.tier import Tier

            log.info("artifact %s: exporting %s for %s (this can take minutes)", key[:12], model, artifact_format)
            self.root.mkdir(parents=True, exist_ok=True)
            importance = tier_dict.get("prune_importance_adapter")
            if importance is not None and adapter_tensors is None:
                raise ValueError("this tier is pruned by a tuned adapter's importance; the cache needs a way to read it")
            try:
                export_artifact(model, Tier.from_dict(tier_dict), directory, save_pruned_base=True,
                                artifact_format=artifact_format,
                                importance_adapter=adapter_tensors(importance) if importance is not None else None,
                                program_cache=self.root / PROGRAM_CACHE_DIR)
            except FileExistsError:
                # Another process finished the same export first; its result is as good as ours.
                manifest = read_manifest(directory)
                self._check_entry(directory, manifest, model, tier_dict, artifact_format)
            return directory

    @staticmethod
    def _check_entry(directory: Path, manifest, model: str, tier_dict: dict, artifact_format: str) -> None:
        if (manifest.data["base_model"]["id"] != model or compiled_tier(manifest.tier) != compiled_tier(tier_dict)
                or manifest.data.get("format", DEFAULT_FORMAT) != artifact_format):
            raise ValueError(f"artifact cache entry {directory} was exported for another model, tier or format")
        bad = manifest.verify_files(directory)
        if bad:
            raise ValueError(f"artifact cache entry {directory} is damaged ({', '.join(bad)}); delete it "
                             "to export again")
