"""What every artifact format answers: the one interface export/, fleet/ and the coordinator ask.

An artifact *format* is one on-device training runtime's packaging of the same eager model
(pruned, LoRA-wrapped, quantized by :mod:`export.pipeline` whatever the format): ExecuTorch's
``.pte`` + ``.ptd``, ONNX Runtime's training models + checkpoint. Everything that differs
between formats is a method of :class:`ArtifactFormat`, so the code around them never asks
which format it holds:

- the exporter asks for the progress ``stages``, whether a tier can be compiled at all
  (:meth:`~ArtifactFormat.unsupported`), the compiled files (:meth:`~ArtifactFormat.build`,
  :meth:`~ArtifactFormat.device_files`) and the manifest's format-specific parts
  (:meth:`~ArtifactFormat.manifest_sections`);
- the coordinator asks what besides the compiled tier makes two artifacts differ
  (:meth:`~ArtifactFormat.artifact_key_extras`), how a round's start adapter is encoded for
  devices (:attr:`~ArtifactFormat.start_adapter_kind`, :meth:`~ArtifactFormat.encode_start_adapter`)
  and how much RAM a device needs (:meth:`~ArtifactFormat.required_ram_mb`);
- the device side asks which start-adapter encoding to fetch, the artifact's own initial
  adapter in it (:meth:`~ArtifactFormat.initial_start_adapter`, for ``fleet/verify.py`` and the
  calibration) and the kind of program it is for the virtual clock's rate table
  (:meth:`~ArtifactFormat.program_kind`, :meth:`~ArtifactFormat.program_kinds`).

A new format (LiteRT, Core ML) is a subclass in ``export/formats/<name>.py`` decorated with
:func:`register`, one import line in ``export/formats/__init__.py``, and its device runtime in
``fleet/runtimes/`` (the same two steps there). The registry is :data:`FORMAT_REGISTRY`, a
:class:`models.plugin_registry.Registry` like every other plug-in family's. Format modules are
imported on the coordinator's request path: they import nothing heavy at module level (no
torch, ExecuTorch or ONNX); the compiler a format drives is imported inside
:meth:`~ArtifactFormat.build`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from models.plugin_registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from export.pipeline import TrainingModel

ExportStageCallback = Callable[[str], None]

#: RAM a device needs per MiB of device files: SmolLM2-135M's 514 MB program trained in 1.4 GB
#: RSS in the ExecuTorch runtime (ENVIRONMENT.md), about 2.7x; plus a fixed runtime overhead.
RAM_PER_ARTIFACT_MB = 2.75
RAM_OVERHEAD_MB = 64


class ArtifactFormat(ABC):
    """One artifact format; subclasses set the class attributes and implement the abstract methods."""

    #: The name jobs, devices (their declared ``runtimes``), manifests and ``--format`` use.
    name: ClassVar[str]
    #: One line for ``pockettune export --help``: what an artifact of this format holds.
    summary: ClassVar[str]
    #: The progress stages an export in this format reports, in order (the progress bar's steps).
    stages: ClassVar[tuple[str, ...]]
    #: Export options beyond the tier that this format's :meth:`build` reads (e.g. ``ort_format``).
    export_options: ClassVar[frozenset[str]] = frozenset()
    #: How a round's start adapter reaches a device: the ``format`` of the adapter blob in a task.
    start_adapter_kind: ClassVar[str]

    # --- before an export ----------------------------------------------------------------------

    def unsupported(self, tier: Mapping) -> str | None:
        """Why ``tier`` (a ``Tier.to_dict()``) cannot be compiled for this format (None: it can).

        Asked before minutes of export, and by the coordinator before it gives a device of this
        runtime a task, rather than ordering an export that must fail. Tiers arrive as dicts, the
        coordinator's form: a format with nothing to refuse never loads ``models.tier`` (torch).
        """
        return None

    def artifact_key_extras(self, tier: Mapping) -> dict:
        """What, besides the model and the compiled part of ``tier`` (a ``Tier.to_dict()``), is
        compiled into an artifact and so belongs in its content key; the training settings a
        runtime takes at run time do not."""
        return {}

    # --- the export ------------------------------------------------------------------------------

    @abstractmethod
    def build(self, training: TrainingModel, out_dir: Path, options: Mapping[str, object],
              on_stage: ExportStageCallback) -> dict:
        """Compile ``training`` into ``out_dir``; returns the compiler's report (stage times and more)."""

    @abstractmethod
    def device_files(self, options: Mapping[str, object]) -> set[str]:
        """The files (or top-level folders) of an artifact a phone downloads, besides the tokenizer."""

    @abstractmethod
    def manifest_sections(self, training: TrainingModel, report: dict) -> dict:
        """The manifest's format-specific parts: ``format``, ``program``, ``prefix`` and ``export``."""

    # --- using an artifact -----------------------------------------------------------------------

    @abstractmethod
    def initial_start_adapter(self, manifest: Mapping) -> str:
        """The artifact's own initial adapter, encoded as a start adapter (a path inside the artifact)."""

    @abstractmethod
    def encode_start_adapter(self, tensors: Mapping[str, np.ndarray]) -> bytes:
        """PEFT-keyed float32 tensors as the start-adapter blob a device of this format loads."""

    @abstractmethod
    def program_kind(self, tier: Mapping) -> str:
        """The kind of program a tier compiles to in this format (a key of the virtual clock's rates):
        ``<format>[-<variant>]-<precision>``."""

    @abstractmethod
    def program_kinds(self) -> dict[str, dict]:
        """Every kind of program this format compiles, with the tier fields that select it (in the
        order ``pockettune export`` takes them as options)."""

    def required_ram_mb(self, manifest: Mapping) -> int:
        """A coarse estimate of the RAM a device needs to train an artifact (from its device files)."""
        device_bytes = sum(f["size"] for f in manifest["files"].values() if f["device"])
        return int(RAM_PER_ARTIFACT_MB * device_bytes / 2**20 + RAM_OVERHEAD_MB + 0.5)


def precision_of(tier: Mapping) -> str:
    """``int8`` when the tier quantizes the frozen base, else ``fp32`` (the last part of a program kind)."""
    return "int8" if tier.get("quantize", "none") == "int8" else "fp32"


def package_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions of ``packages`` (None for one that is not installed), in that order."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


class UnknownFormatError(ValueError):
    """An artifact format no plug-in registered (the message lists the known ones)."""


#: Every artifact format, by name; members register with :func:`register` (``export/formats/__init__.py``
#: imports each member module once).
FORMAT_REGISTRY: Registry[ArtifactFormat] = Registry("artifact format", unknown_error=UnknownFormatError)

#: Class decorator: make an :class:`ArtifactFormat` subclass available under its ``name``.
register = FORMAT_REGISTRY.register


def get_format(name: str) -> ArtifactFormat:
    """The format registered as ``name`` (:class:`UnknownFormatError`, a ``ValueError``, if none is)."""
    return FORMAT_REGISTRY.get(name)


def format_names() -> tuple[str, ...]:
    """The registered formats' names, sorted."""
    return tuple(FORMAT_REGISTRY.names())
