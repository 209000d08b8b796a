"""`edgetune predict`: labels, tags or answer spans of an encoder bundle, as JSONL (device side)."""

import argparse
import json
import sys

from edgetune.cli.common import add_command, positive_int


def run_predict(args: argparse.Namespace) -> None:
    """Print one JSON prediction per line of --data; with --metrics, the scores on stderr."""
    from edgetune.runtime.predict import EncoderPredictor

    predictor = EncoderPredictor(
        args.bundle, args.adapter, seq_len=args.seq_len, batch_size=args.batch_size, precision=args.precision
    )
    examples, predictions, metrics = predictor.predict_file(args.data, args.limit)
    if not args.metrics_only:
        for example, prediction in zip(examples, predictions):
            print(json.dumps({"source": example["source"], **prediction}))
    if args.metrics or args.metrics_only:
        if not metrics:
            print(f"edgetune: {args.data} has no labels to score", file=sys.stderr)
            return
        line = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"{len(examples)} examples: {line}", file=sys.stderr if not args.metrics_only else sys.stdout)


def register(sub) -> None:
    """Add `predict`."""
    p = add_command(sub, "predict", run_predict, help="labels, tags or answer spans with an encoder bundle (JSONL)")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="JSONL in the bundle's task format (labels optional)")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder (default: the bundle's untrained head)")
    p.add_argument("--metrics", action="store_true", help="also score the predictions against the data's labels")
    p.add_argument("--metrics-only", action="store_true", help="print only the scores")
    p.add_argument(
        "--precision",
        choices=("int8", "fp32"),
        default="int8",
        help="int8 weights in the encoder's linear layers (default; faster) or fp32 (the exact logits)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--limit", type=positive_int, default=None, help="the first N examples")
