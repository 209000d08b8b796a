"""`edgetune merge`."""

import argparse
from pathlib import Path

from edgetune.cli.common import add_command


def run_merge(args: argparse.Namespace) -> None:
    """Fold an adapter into the base weights and print where it went."""
    from edgetune.runtime.merge import merge

    manifest = merge(Path(args.bundle), Path(args.adapter), Path(args.output), sign=args.sign, quant=args.quant)
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"merged {args.adapter} into {args.output} ({size / 1e6:.1f} MB)")


def register(sub) -> None:
    """Add `merge`."""
    p = add_command(sub, "merge", run_merge, help="fold an adapter into the base weights as a standalone model")
    p.add_argument("bundle")
    p.add_argument("--adapter", required=True, help="PEFT adapter folder (runs/NAME/adapter)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--sign", default=None, metavar="KEYFILE", help="sign the merged folder with this private key")
    p.add_argument(
        "--quant",
        choices=["int8", "int4"],
        default=None,
        help="int8 weights per output channel, or int4 in blocks of 32 with the LM head int8 (default: float32)",
    )
