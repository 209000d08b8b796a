"""The `edgetune` command: a thin argparse layer over one public function per stage.

Each subcommand lives in its own module with a `register(subparsers)` function, and
imports its side lazily, so `edgetune train` never loads torch. Errors: an
`EdgetuneError` is printed as one line (a refused config field as the flag that set it);
anything else is a bug and keeps its traceback.
"""

import argparse
import os
import sys

from edgetune.cli import build, data, export, fed, generate, merge, predict, serve, train, trust
from edgetune.common.errors import ConfigError, EdgetuneError

# each registers one or more subcommands, in help order
COMMANDS = (build, train, generate, predict, merge, export, serve, data, fed, trust)


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
        use_trust(args.trust)
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


def use_trust(path: str | None) -> None:
    """--trust PUBFILE: check the file now, then let it replace $EDGETUNE_TRUSTED_KEYS for this process,
    so that every bundle and adapter the command opens must be signed by one of its keys."""
    from edgetune.common.trust import TRUSTED_KEYS_ENV, resolve_trust

    if path is not None:
        resolve_trust(path)
        os.environ[TRUSTED_KEYS_ENV] = str(path)
    else:
        resolve_trust(None)  # a broken $EDGETUNE_TRUSTED_KEYS file fails here, in one line


def flag_of(parser: argparse.ArgumentParser, field: str) -> str:
    """The flag (or positional name) of `parser` that sets config field `field`."""
    for action in parser._actions:
        if action.dest == field:
            return max(action.option_strings, key=len) if action.option_strings else action.dest.upper()
    return field
