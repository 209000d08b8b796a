"""`edgetune train` (device side, torch-free)."""

import argparse
from pathlib import Path

from edgetune.cli.common import add_command, config_from_args
from edgetune.options import CLASS_WEIGHTS, SCHEDULES, TrainConfig, field_names


def run_train(args: argparse.Namespace) -> None:
    """Train and print a one-line summary."""
    from edgetune.runtime.metrics import eval_line
    from edgetune.runtime.tuner import Tuner

    config = config_from_args(TrainConfig, args, progress=not args.no_progress)
    options = {
        f: getattr(config, f) for f in field_names(TrainConfig) if f not in ("bundle", "out", "data", "eval_data")
    }
    summary = Tuner(config.bundle, config.out).run(config.data, config.eval_data, catch_signals=True, **options)
    final = summary.get("final_eval") or {}
    if "perplexity" in final:
        eval_part = f", eval loss {final['eval_loss']:.4f} (ppl {final['perplexity']:.2f})"
    else:
        eval_part = f", {eval_line(final)}" if final else ""
    speed = f"{summary['tokens_per_s']:.0f} tokens/s" if summary.get("tokens_per_s") else "no step run"
    startup = f", start-up {summary['startup_s']:.2f} s" if summary.get("startup_s") is not None else ""
    loss = summary.get("final_train_loss")
    print(
        f"trained {summary['steps']} steps in {summary['train_s']:.1f} s ({speed}{startup}): "
        f"train loss {'n/a' if loss is None else f'{loss:.4f}'}{eval_part}; adapter in {Path(args.out) / 'adapter'}"
    )


def register(sub) -> None:
    """Add `train`."""
    p = add_command(sub, "train", run_train, help="fine-tune the bundle's adapter on CPU (device side, torch-free)")
    p.add_argument("bundle")
    p.add_argument(
        "--data", required=True, help="JSONL (text | prompt/completion | messages; encoder tasks: their format) or .txt"
    )
    p.add_argument("--eval-data", default=None)
    p.add_argument("-o", "--output", dest="out", required=True, help="run folder (runs/NAME)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None)
    length.add_argument("--epochs", type=float, default=None)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=float, default=0.03, help="< 1: fraction of the steps; >= 1: steps")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed data lines")
    p.add_argument("--init-adapter", default=None, help="PEFT adapter folder to start from")
    p.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTS,
        default=None,
        help="classification: weigh each label in the loss by its inverse frequency in --data",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sign", default=None, metavar="KEYFILE", help="sign the final adapter with this private key")
