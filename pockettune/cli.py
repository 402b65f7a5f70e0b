"""``pockettune <command>``: dispatches to the subcommands each package defines.

Each subcommand module provides ``add_parser(subparsers)`` (which registers its options and
sets ``func``) so that a package owns its own command line, and this file only lists them.
Usage errors print one line and exit with status 2, the convention of Unix tools, so that
scripts can tell a bad invocation (2) from a failure while working (1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

EXIT_USAGE = 2


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line naming the command, then exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class UsageError(Exception):
    """A bad argument found after parsing (e.g. a value out of range): exit 2, one line."""


def _subcommand_modules():
    from coordinator import cli as coordinator_cli
    from export import cli as export_cli
    from fleet import cli as fleet_cli
    from pockettune import demo, generate

    return [export_cli, coordinator_cli, fleet_cli, demo, generate]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="pockettune",
        description="Federated fine-tuning of small language models on phones and edge devices.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    subparsers.required = True
    for module in _subcommand_modules():
        module.add_parser(subparsers)
    return parser


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


def main(argv: list[str] | None = None) -> int:
    quiet_library_chatter()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"pockettune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pockettune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
