"""`edgetune build` (dev box) and `edgetune inspect`."""

import argparse
import json
import sys
from pathlib import Path

from edgetune.cli.common import add_command, config_from_args
from edgetune.options import (
    BLOCK_SIZES,
    COMPUTES,
    METHODS,
    OPTIMIZERS,
    QUANT_TYPES,
    SERVE_QUANTS,
    TASKS,
    TRAINABLE,
    BuildConfig,
)


def run_build(args: argparse.Namespace) -> None:
    """Build a bundle and print a one-line summary."""
    from edgetune.builder.pipeline import build_bundle

    manifest = build_bundle(config_from_args(BuildConfig, args))
    size = sum(f["size"] for f in manifest["files"].values())
    print(
        f"built {args.out}: {manifest['architecture']}, "
        f"{len(manifest['adapted_modules'])} adapted layers, {size / 1e6:.1f} MB"
    )


def run_inspect(args: argparse.Namespace) -> None:
    """Print a bundle's (or genai folder's) manifest after checking it as every command does; describe an export."""
    from edgetune.common.bundle import open_bundle

    if Path(args.bundle).is_file():
        from edgetune.exporters import describe

        print(json.dumps(describe(Path(args.bundle)), indent=2))
        return
    bundle = open_bundle(Path(args.bundle))
    print(json.dumps(dict(bundle.manifest), indent=2))
    signed = f"; signed by trusted key {bundle.signed_by}" if bundle.signed_by else ""
    print(f"ok: {len(bundle.files)} files match their sha256, every path stays inside{signed}", file=sys.stderr)


def register(sub) -> None:
    """Add `build` and `inspect`."""
    p = add_command(sub, "build", run_build, help="export a HF model and build a trainable bundle (dev box)")
    p.add_argument("model", help="local HF folder, .gguf file, or hub id")
    p.add_argument("-o", "--output", dest="out", required=True, help="bundle folder to create")
    p.add_argument(
        "--targets", default=None, help="comma-separated module names, or all-linear (default: per architecture)"
    )
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument(
        "--rslora", dest="use_rslora", action="store_true", help="scale by alpha/sqrt(r) (PEFT's use_rslora)"
    )
    p.add_argument(
        "--method", choices=METHODS, default="lora", help="qlora: LoRA over a quantized frozen base (needs --quant)"
    )
    p.add_argument(
        "--quant",
        choices=QUANT_TYPES,
        default=None,
        help="qlora base: int8 per output channel, or int4 in blocks of --block-size",
    )
    p.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=32, help="int4 block size")
    p.add_argument(
        "--serve-quant",
        choices=SERVE_QUANTS,
        default="int8",
        help="serving graph weights: int8 (default: as accurate as fp32 on the demo), int4, or none (fp32)",
    )
    p.add_argument(
        "--compute",
        choices=COMPUTES,
        default="fp32",
        help="int8: the frozen Linears train as int8 GEMMs, forward and backward (lora, or qlora --quant int8)",
    )
    p.add_argument("--init-adapter", default=None, help="start from an existing PEFT LoRA/DoRA adapter folder")
    p.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute each layer in the backward pass: less memory, ~25%% more time (default: on for qlora)",
    )
    p.add_argument(
        "--trainable", choices=TRAINABLE, default="all", help="lora_B: A stays frozen at its seeded init (FFA-LoRA)"
    )
    p.add_argument(
        "--base-delta",
        action="store_true",
        help="adapted weights become W + a delta the device can update (FedEx-LoRA; method lora)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--task", choices=TASKS, default="causal-lm", help="encoder tasks train a new head too")
    p.add_argument("--labels", default=None, help="classification tasks: comma-separated label names, in id order")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's initial A")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--sign", default=None, metavar="KEYFILE", help="sign the manifest with this private key")

    p = add_command(
        sub,
        "inspect",
        run_inspect,
        help="verify a bundle's (or exported folder's) files; describe a .gguf/.onnx_adapter",
    )
    p.add_argument("bundle", help="bundle, merged or genai folder; or an exported .gguf / .onnx_adapter file")
