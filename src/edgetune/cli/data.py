"""`edgetune data`: generated skill data sets."""

import argparse

from edgetune.cli.common import add_command, positive_int


def run_data(args: argparse.Namespace) -> None:
    """Write the train and held-out splits and say where."""
    from edgetune.tasks import dates

    if args.clients:
        per_client = args.train // args.clients
        paths = dates.write_client_parts(args.output, args.clients, per_client, args.heldout, seed=args.seed)
        print(
            f"wrote {args.clients} non-IID client parts of {per_client} examples in {args.output} "
            f"(client-00.jsonl ...) and {paths['heldout']} ({args.heldout} examples)"
        )
        return
    paths = dates.write_splits(args.output, args.train, args.heldout, seed=args.seed)
    print(f"wrote {paths['train']} ({args.train} examples) and {paths['heldout']} ({args.heldout} examples)")


def register(sub) -> None:
    """Add `data`."""
    p = add_command(sub, "data", run_data, help="generate a skill data set whose answers can be checked exactly")
    p.add_argument("task", choices=("dates",), help="dates: rewrite written dates as ISO 8601")
    p.add_argument("-o", "--output", required=True, help="folder for train.jsonl and heldout.jsonl")
    p.add_argument("--train", type=positive_int, default=2000)
    p.add_argument("--heldout", type=positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clients",
        type=positive_int,
        default=None,
        help="write --train examples as N non-IID client parts (3 of the 9 date styles each), for edgetune fed",
    )
