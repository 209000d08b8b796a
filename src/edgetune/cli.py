"""The `edgetune` command: a thin argparse layer over one public function per stage.

Each subcommand imports its side lazily, so `edgetune train` never loads torch.
"""

import argparse
import json
import sys
from pathlib import Path

from edgetune.common.errors import EdgetuneError


def _build(args: argparse.Namespace) -> None:
    from edgetune.build.bundle import build_bundle
    from edgetune.build.lora import LoraSpec

    spec = LoraSpec(rank=args.rank, alpha=args.alpha, dropout=args.dropout, use_rslora=args.rslora)
    manifest = build_bundle(
        args.model, Path(args.output), targets=args.targets, spec=spec,
        optimizer=args.optimizer, task=args.task, seed=args.seed, force=args.force,
    )
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"built {args.output}: {manifest['architecture']}, "
          f"{len(manifest['adapted_modules'])} adapted layers, {size / 1e6:.1f} MB")


def _inspect(args: argparse.Namespace) -> None:
    from edgetune.common.manifest import verify

    manifest = verify(Path(args.bundle))
    print(json.dumps(manifest, indent=2))
    print(f"ok: {len(manifest['files'])} files match their sha256", file=sys.stderr)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _dropout(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="edgetune", description="Fine-tune and serve language models on your own devices.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="export a HF model and build a trainable bundle (dev box)")
    p.add_argument("model", help="local HF folder, .gguf file, or hub id")
    p.add_argument("-o", "--output", required=True, help="bundle folder to create")
    p.add_argument("--targets", default=None, help="comma-separated module names, or all-linear (default: per architecture)")
    p.add_argument("--rank", type=_positive_int, default=8)
    p.add_argument("--alpha", type=_positive_float, default=16.0)
    p.add_argument("--dropout", type=_dropout, default=0.0)
    p.add_argument("--rslora", action="store_true", help="scale by alpha/sqrt(r) (PEFT's use_rslora)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--task", choices=("causal-lm",), default="causal-lm")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's initial A")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_build)

    p = sub.add_parser("inspect", help="print a bundle's manifest and verify every file's hash")
    p.add_argument("bundle")
    p.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edgetune` console script."""
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except EdgetuneError as e:
        print(f"edgetune: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgetune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
