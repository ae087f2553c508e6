"""The ``activelabel`` command line: one subcommand per module of :mod:`activelabel.commands`.

This module only dispatches (serve, data, model, pacs, simulate, autolabel, cost, users, score).  Errors a
user can fix (an :class:`~activelabel.errors.ActiveLabelError`, or an ``OSError`` such as a
permission denied) end the command with exit code 2 and one line on stderr starting with
``error:``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from activelabel.commands import autolabel, cost, data, model, pacs, score, serve, simulate, status, users
from activelabel.errors import ActiveLabelError

USAGE_ERROR = 2
"""Exit code of a command stopped by an error the user can fix."""


def build_parser() -> argparse.ArgumentParser:
    """The ``activelabel`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="activelabel", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (serve, data, model, pacs, simulate, autolabel, cost, users, score, status):
        command.register(subparsers)
    return parser


def one_line(error: BaseException) -> str:
    """The error's message folded onto one line (its class name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit code, or 2 after one ``error:`` line."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ActiveLabelError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
