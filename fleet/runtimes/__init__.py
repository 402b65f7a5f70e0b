"""Device runtimes, one file per on-device training engine, looked up by format name (``get_runtime("executorch")``).

Adding one: write ``fleet/runtimes/<name>.py`` with a ``@register``-ed subclass of
:class:`~fleet.runtimes.base.Runtime` and import it below; its artifact format goes in
``export/formats/`` the same way, under the same name.
"""

from fleet.runtimes.base import Runtime, Trainer, get_runtime, register, runtime_names
from fleet.runtimes import executorch  # noqa: F401  (registers "executorch")
from fleet.runtimes import onnxruntime  # noqa: F401  (registers "onnxruntime")

__all__ = ["Runtime", "Trainer", "get_runtime", "register", "runtime_names"]
