"""Console conventions every ``pockettune`` subcommand shares: usage errors and a quiet terminal.

Each package's command line (``export/cli.py``, ``coordinator/cli.py``, ``fleet/cli.py``,
``pockettune/demo.py``, ...) raises :class:`UsageError` and the benches call
:func:`quiet_library_chatter`; ``pockettune/cli.py`` imports those command lines to dispatch
to them. Keeping the shared pieces here, in a module that imports nothing from the project and
sits at the bottom of the package graph (``models`` is the layer every other package may
import), means a subcommand never imports the dispatcher that imports it, and no package
reaches up to a higher one for its error type.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: Exit status of a bad invocation, the convention of Unix tools, so that scripts can tell a
#: bad invocation (2) from a failure while working (1).
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument found after parsing (e.g. a value out of range): exit 2, one line."""


#: Libraries that log import-time chatter (optional CUDA kernels, deprecations) at WARNING.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "executorch", "transformers", "peft")


def quiet_library_chatter() -> None:
    """Keep the terminal for PocketTune's own progress and errors.

    torchao warns at import that its CUDA-only kernels cannot load, torch and transformers
    emit deprecation notes; none of it is actionable for someone running an export on a CPU.
    """
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Hugging Face's per-file bars (loading, converting, writing weights) read this at import;
    # PocketTune shows its own progress for the work they are part of.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
