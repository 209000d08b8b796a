"""`edgetune serve`: an OpenAI-compatible server for a bundle and its adapters (device side)."""

import argparse
import importlib.util

from edgetune.cli.common import add_command, config_from_args, positive_int
from edgetune.common.errors import EdgetuneError
from edgetune.options import ServeConfig


def adapter_pair(text: str) -> tuple[str, str]:
    """argparse type: NAME=DIR."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, folder


def run_serve(args: argparse.Namespace) -> None:
    """Check the extra is installed, then serve until SIGTERM."""
    missing = [m for m in ("starlette", "uvicorn", "prometheus_client", "multipart") if not importlib.util.find_spec(m)]
    if missing:
        raise EdgetuneError(f"serving needs the serve extra (pip install 'edgetune[serve]'); missing {missing[0]}")
    from edgetune.serve.server import serve

    serve(config_from_args(ServeConfig, args, adapters=tuple(args.adapters)))


def register(sub) -> None:
    """Add `serve`."""
    p = add_command(sub, "serve", run_serve, help="serve the bundle and its adapters over OpenAI's HTTP API")
    p.add_argument("bundle")
    p.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        type=adapter_pair,
        default=[],
        metavar="NAME=DIR",
        help="serve the adapter in DIR as model NAME (repeatable)",
    )
    p.add_argument(
        "--adapters-dir",
        default=None,
        help="the only folder POST /v1/adapters loads from, where fine-tuned adapters go (default: STATE_DIR/adapters)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="uploaded files, fine-tuning jobs and their runs (default: ~/.local/state/edgetune)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (not loopback: needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    p.add_argument("--api-key", default=None, help="clients must send Authorization: Bearer KEY")
    p.add_argument("--max-batch", type=positive_int, default=8, help="requests decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a row; more get 429")
    p.add_argument("--max-tokens-limit", type=positive_int, default=1024, help="largest max_tokens a request may ask")
    p.add_argument("--max-adapters", type=positive_int, default=8, help="adapters held in memory at once")
    p.add_argument("--model-name", default=None, help="the base model's name in the API (default: the source's)")
    p.add_argument("--sign", default=None, metavar="KEYFILE", help="sign the adapters fine-tuning jobs write")
    p.add_argument("--job-nice", type=int, default=10, help="how much lower fine-tuning jobs run than serving (nice)")
    p.add_argument(
        "--spin",
        action="store_true",
        help="decoding threads spin-wait between ops: faster on a device that only serves, slower beside other work",
    )
    p.add_argument(
        "--no-lean",
        dest="lean",
        action="store_false",
        help="no second session for base-model decode steps (slower base model, the serving weights held once)",
    )
    p.add_argument(
        "--fold",
        default=None,
        metavar="NAME",
        help="fold adapter NAME (one of --adapter) into the serving weights: its requests decode at the base model's"
        " speed, the base model's on the full graph",
    )
    p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for requests in flight")
