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
        method=args.method, quant=args.quant, block_size=args.block_size,
        init_adapter=Path(args.init_adapter) if args.init_adapter else None,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"built {args.output}: {manifest['architecture']}, "
          f"{len(manifest['adapted_modules'])} adapted layers, {size / 1e6:.1f} MB")


def _inspect(args: argparse.Namespace) -> None:
    from edgetune.common.manifest import verify

    manifest = verify(Path(args.bundle))
    print(json.dumps(manifest, indent=2))
    print(f"ok: {len(manifest['files'])} files match their sha256", file=sys.stderr)


def _train(args: argparse.Namespace) -> None:
    from edgetune.runtime.train import train

    summary = train(
        args.bundle, args.data, args.output, eval_data=args.eval_data, steps=args.steps, epochs=args.epochs,
        lr=args.lr, warmup=args.warmup, schedule=args.schedule, batch_size=args.batch_size,
        grad_accum=args.grad_accum, seq_len=args.seq_len, eval_every=args.eval_every,
        save_every=args.save_every, seed=args.seed, resume=args.resume, skip_bad_lines=args.skip_bad_lines,
        init_adapter=args.init_adapter, progress=not args.no_progress,
    )
    eval_part = (f", eval loss {summary['final_eval_loss']:.4f} (ppl {summary['final_perplexity']:.2f})"
                 if summary.get("final_eval_loss") is not None else "")
    print(f"trained {summary['steps']} steps in {summary['train_s']:.1f} s "
          f"({summary['tokens_per_s']:.0f} tokens/s, start-up {summary['startup_s']:.2f} s): "
          f"train loss {summary['final_train_loss']:.4f}{eval_part}; adapter in {Path(args.output) / 'adapter'}")


def _generate(args: argparse.Namespace) -> None:
    from edgetune.runtime.generate import Generator

    if not args.chat and args.prompt is None:
        raise EdgetuneError("give --prompt TEXT, or --chat")
    g = Generator(args.bundle, adapter=args.adapter)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   truncate=args.truncate, stop=args.stop or ())
    if not args.chat:
        _emit(g.stream(args.prompt, args.max_new_tokens, **options), args.no_stream)
        return
    g.chat_prompt([{"role": "user", "content": "x"}])  # fails now if there is no chat template
    messages = [{"role": "system", "content": args.system}] if args.system else []
    turns = [args.prompt] if args.prompt is not None else _read_turns()
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        reply = _emit(g.stream_chat(messages, args.max_new_tokens, **options), args.no_stream)
        messages.append({"role": "assistant", "content": reply})


def _read_turns():
    """User turns typed on stdin, one per line, until EOF."""
    while True:
        if sys.stdin.isatty():
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")


def _emit(pieces, no_stream: bool) -> str:
    """Print generated text as it comes (or once at the end) and return it."""
    text = ""
    for piece in pieces:
        text += piece
        if not no_stream:
            print(piece, end="", flush=True)
    print(text if no_stream else "", flush=True)
    return text


def _eval(args: argparse.Namespace) -> None:
    from edgetune.runtime.evaluate import evaluate_exact_match
    from edgetune.runtime.generate import Generator

    g = Generator(args.bundle, adapter=args.adapter)
    result = evaluate_exact_match(g, Path(args.data), max_new_tokens=args.max_new_tokens, limit=args.limit)
    for prompt, prediction, reference in result.rows[: args.show]:
        print(f"  {prompt.splitlines()[0]!r:50} -> {prediction.strip()!r:16} (expected {reference.strip()!r})")
    print(f"exact match: {result.accuracy:.1%} of {len(result.rows)} in {result.seconds:.1f} s")


def _merge(args: argparse.Namespace) -> None:
    from edgetune.runtime.merge import merge

    manifest = merge(Path(args.bundle), Path(args.adapter), Path(args.output))
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"merged {args.adapter} into {args.output} ({size / 1e6:.1f} MB)")


def _data(args: argparse.Namespace) -> None:
    from edgetune.tasks import dates

    paths = dates.write_splits(args.output, args.train, args.heldout, seed=args.seed)
    print(f"wrote {paths['train']} ({args.train} examples) and {paths['heldout']} ({args.heldout} examples)")


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
    p.add_argument("--method", choices=("lora", "dora", "qlora"), default="lora",
                   help="qlora: LoRA over a quantized frozen base (needs --quant)")
    p.add_argument("--quant", choices=("int8", "int4"), default=None,
                   help="qlora base: int8 per output channel, or int4 in blocks of --block-size")
    p.add_argument("--block-size", type=int, default=32, help="int4 block size: 32, 64 or 128")
    p.add_argument("--init-adapter", default=None, help="start from an existing PEFT LoRA/DoRA adapter folder")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each layer in the backward pass: less memory, ~25%% more time "
                        "(default: on for qlora)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--task", choices=("causal-lm",), default="causal-lm")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter's initial A")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_build)

    p = sub.add_parser("inspect", help="print a bundle's manifest and verify every file's hash")
    p.add_argument("bundle")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("train", help="fine-tune the bundle's adapter on CPU (device side, torch-free)")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="JSONL (text | prompt/completion | messages) or .txt")
    p.add_argument("--eval-data", default=None)
    p.add_argument("-o", "--output", required=True, help="run folder (runs/NAME)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, default=None)
    length.add_argument("--epochs", type=_positive_float, default=None)
    p.add_argument("--lr", type=_positive_float, default=2e-4)
    p.add_argument("--warmup", type=float, default=0.03, help="< 1: fraction of the steps; >= 1: steps")
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default="cosine")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--grad-accum", type=_positive_int, default=1)
    p.add_argument("--seq-len", type=_positive_int, default=512)
    p.add_argument("--eval-every", type=_positive_int, default=None)
    p.add_argument("--save-every", type=_positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed data lines")
    p.add_argument("--init-adapter", default=None, help="PEFT adapter folder to start from")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("generate", help="generate text with the bundle (optionally with an adapter)")
    p.add_argument("bundle", help="bundle folder, or a merged model folder")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder, served unmerged")
    p.add_argument("--prompt", default=None, help="the prompt (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true", help="use the chat template; without --prompt, read turns from stdin")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--truncate", action="store_true", help="keep the last tokens of a prompt longer than the context")
    p.add_argument("--no-stream", action="store_true", help="print the whole answer at the end")
    p.set_defaults(func=_generate)

    p = sub.add_parser("eval", help="exact-match accuracy on prompt/completion data (greedy)")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="JSONL with prompt/completion examples")
    p.add_argument("--adapter", default=None)
    p.add_argument("--max-new-tokens", type=_positive_int, default=16)
    p.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N examples")
    p.add_argument("--show", type=int, default=3, help="print this many answers")
    p.set_defaults(func=_eval)

    p = sub.add_parser("merge", help="fold an adapter into the base weights as a standalone model")
    p.add_argument("bundle")
    p.add_argument("--adapter", required=True, help="PEFT adapter folder (runs/NAME/adapter)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=_merge)

    p = sub.add_parser("data", help="generate a skill data set whose answers can be checked exactly")
    p.add_argument("task", choices=("dates",), help="dates: rewrite written dates as ISO 8601")
    p.add_argument("-o", "--output", required=True, help="folder for train.jsonl and heldout.jsonl")
    p.add_argument("--train", type=_positive_int, default=2000)
    p.add_argument("--heldout", type=_positive_int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data)
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
