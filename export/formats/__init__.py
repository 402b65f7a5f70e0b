"""Artifact formats, one file per on-device training runtime, looked up by name (``get_format("onnxruntime")``).

Adding one: write ``export/formats/<name>.py`` with a ``@register``-ed subclass of
:class:`~export.formats.base.ArtifactFormat` and import it below; its device runtime goes in
``fleet/runtimes/`` the same way. :data:`FORMATS` is then the one list of formats that the
exporter, the coordinator and devices accept.
"""

from export.formats.base import (ArtifactFormat, UnknownFormatError, format_names, get_format,
                                 register)
from export.formats import executorch  # noqa: F401  (registers "executorch")
from export.formats import onnxruntime  # noqa: F401  (registers "onnxruntime")

#: Every registered format's name, sorted: what ``--format``, jobs and devices' ``runtimes`` may name.
FORMATS: tuple[str, ...] = format_names()
#: The format a job's own artifact is built in, and what a device runs when it names no runtime.
DEFAULT_FORMAT: str = executorch.ExecuTorchFormat.name

__all__ = ["ArtifactFormat", "DEFAULT_FORMAT", "FORMATS", "UnknownFormatError", "format_names", "get_format",
           "register"]
