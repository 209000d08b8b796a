"""What the subcommand modules share: the subcommand parser (with --trust), configs from parsed flags."""

import argparse
from dataclasses import fields


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """An instance of config dataclass `cls` from the parsed flags whose dest is one of its fields."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def add_command(sub, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser that runs `func(args)`; errors name its own flags. Every command takes --trust."""
    parser = sub.add_parser(name, **kwargs)
    parser.set_defaults(func=func, parser=parser)
    parser.add_argument(
        "--trust",
        default=None,
        metavar="PUBFILE",
        help="trust only bundles and adapters signed by a key in PUBFILE (default: $EDGETUNE_TRUSTED_KEYS)",
    )
    return parser


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value
