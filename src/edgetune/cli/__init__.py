"""The `edgetune` command: a thin argparse layer over one public function per stage.

Each subcommand lives in its own module with a `register(subparsers)` function, and
imports its side lazily, so `edgetune train` never loads torch. Errors: an
`EdgetuneError` is printed as one line (a refused config field as the flag that set it);
anything else is a bug and keeps its traceback.
"""

import argparse
import sys

from edgetune.cli import build, data, fed, generate, merge, predict, train
from edgetune.common.errors import ConfigError, EdgetuneError

COMMANDS = (build, train, generate, predict, merge, data, fed)  # each registers one or more subcommands, in help order


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="edgetune", description="Fine-tune and serve language models on your own devices."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edgetune` console script."""
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"edgetune: {flag_of(args.parser, e.field)}: {e.reason}", file=sys.stderr)
        return 1
    except EdgetuneError as e:
        print(f"edgetune: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgetune: interrupted", file=sys.stderr)
        return 130
    return 0


def flag_of(parser: argparse.ArgumentParser, field: str) -> str:
    """The flag (or positional name) of `parser` that sets config field `field`."""
    for action in parser._actions:
        if action.dest == field:
            return max(action.option_strings, key=len) if action.option_strings else action.dest.upper()
    return field
