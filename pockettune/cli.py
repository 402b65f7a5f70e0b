"""``pockettune <command>``: dispatches to the subcommands each package defines.

Each subcommand module provides ``add_parser(subparsers)`` (which registers its options and
sets ``func``) so that a package owns its own command line, and this file only lists them.
Usage errors print one line and exit with status 2, the convention of Unix tools, so that
scripts can tell a bad invocation (2) from a failure while working (1). Subcommands raise
:class:`~models.console.UsageError` from :mod:`models.console`, never from here: this
module imports them, so they must not import it.
"""

from __future__ import annotations

import argparse
import sys

from models.console import EXIT_USAGE, UsageError, quiet_library_chatter


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line naming the command, then exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _subcommand_modules():
    from coordinator import cli as coordinator_cli
    from export import cli as export_cli
    from fleet import cli as fleet_cli
    from pockettune import demo, generate

    return [export_cli, coordinator_cli, fleet_cli, demo, generate]


def build_parser() -> argparse.ArgumentParser:
    """The ``pockettune`` parser with every package's subcommand registered."""
    parser = OneLineErrorParser(
        prog="pockettune",
        description="Federated fine-tuning of small language models on phones and edge devices.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)
    subparsers.required = True
    for module in _subcommand_modules():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``pockettune`` command; its exit status (2 for a usage error, 130 when interrupted)."""
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
