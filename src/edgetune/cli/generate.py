"""`edgetune generate` and `edgetune eval`: the runtime's decoding, from the command line."""

import argparse
import sys
from pathlib import Path

from edgetune.cli.common import add_command, positive_int
from edgetune.common.errors import EdgetuneError

SPIN_HELP = (
    "threads spin-wait between ops, as llama.cpp's do (the default for these one-shot commands); "
    "--no-spin on a device busy with other work, where spinning threads decode slower"
)
FOLD_HELP = "fold the adapter into the serving weights: the base model's decode speed, int8 weights requantized"


def _decoder(bundle: str, adapter: str | None, spin: bool = False, fold: bool = False):
    """The bundle's decode engine (`adapter` loaded, folded if `fold`); a Generator where there is no serve.onnx."""
    from edgetune.common.names import SERVE_MODEL
    from edgetune.runtime.evaluate import open_decoder

    if fold and adapter is None:
        raise EdgetuneError("--fold needs --adapter")
    if fold and not (Path(bundle) / SERVE_MODEL).is_file():
        raise EdgetuneError(f"{bundle}: --fold needs a bundle's serving graph ({SERVE_MODEL})")
    return open_decoder(Path(bundle), None if adapter is None else Path(adapter), spin, fold)


class _EngineChat:
    """The part of Generator's API `edgetune generate` uses, over an Engine."""

    def __init__(self, engine, adapter: str | None):
        self.engine, self.adapter = engine, adapter

    def _stream_ids(self, ids, max_new_tokens, truncate=False, stop=(), **sampling):
        from edgetune.runtime.sampling import SamplingParams

        if truncate:
            room, context = self.engine.capacity - max_new_tokens, self.engine.capacity
            if room < 1:
                raise EdgetuneError(
                    f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's context of"
                    f" {context} (truncate needs max_new_tokens < {context})"
                )
            ids = ids[-room:]
        params = SamplingParams(**sampling)
        return self.engine.stream(ids, self.adapter, params, max_new_tokens, stop)

    def stream(self, prompt, max_new_tokens, **options):
        return self._stream_ids(self.engine.encode(prompt), max_new_tokens, **options)

    def chat_prompt(self, messages):
        return self.engine.files.chat_text(messages)

    def stream_chat(self, messages, max_new_tokens, **options):
        return self._stream_ids(self.engine.chat_prompt(messages), max_new_tokens, **options)


def run_generate(args: argparse.Namespace) -> None:
    """Complete a prompt, or chat (one turn from --prompt, or turns from stdin)."""
    from edgetune.runtime.engine import Engine
    from edgetune.runtime.evaluate import ADAPTER

    if not args.chat and args.prompt is None:
        raise EdgetuneError("give --prompt TEXT, or --chat")
    g = _decoder(args.bundle, args.adapter, args.spin, args.fold)
    if isinstance(g, Engine):
        g = _EngineChat(g, None if args.adapter is None else ADAPTER)
    options = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        truncate=args.truncate,
        stop=args.stop or (),
    )
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


def run_eval(args: argparse.Namespace) -> None:
    """Greedy exact match on prompt/completion data, with a few answers shown."""
    from edgetune.runtime.evaluate import ADAPTER, evaluate_exact_match

    g = _decoder(args.bundle, args.adapter, args.spin, args.fold)
    adapter = None if args.adapter is None else ADAPTER
    result = evaluate_exact_match(g, Path(args.data), args.max_new_tokens, args.limit, adapter=adapter)
    for prompt, prediction, reference in result.rows[: args.show]:
        print(f"  {prompt.splitlines()[0]!r:50} -> {prediction.strip()!r:16} (expected {reference.strip()!r})")
    print(f"exact match: {result.accuracy:.1%} of {len(result.rows)} in {result.seconds:.1f} s")


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


def register(sub) -> None:
    """Add `generate` and `eval`."""
    p = add_command(sub, "generate", run_generate, help="generate text with the bundle (optionally with an adapter)")
    p.add_argument("bundle", help="bundle folder, or a merged model folder")
    p.add_argument("--adapter", default=None, help="PEFT adapter folder, served unmerged")
    p.add_argument("--prompt", default=None, help="the prompt (with --chat: the user's message)")
    p.add_argument("--chat", action="store_true", help="use the chat template; without --prompt, read turns from stdin")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--truncate", action="store_true", help="keep the last tokens of a prompt longer than the context")
    p.add_argument("--no-stream", action="store_true", help="print the whole answer at the end")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=True, help=SPIN_HELP)
    p.add_argument("--fold", action="store_true", help=FOLD_HELP)

    p = add_command(sub, "eval", run_eval, help="exact-match accuracy on prompt/completion data (greedy)")
    p.add_argument("bundle")
    p.add_argument("--data", required=True, help="JSONL with prompt/completion examples")
    p.add_argument("--adapter", default=None)
    p.add_argument("--max-new-tokens", type=positive_int, default=16)
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N examples")
    p.add_argument("--show", type=int, default=3, help="print this many answers")
    p.add_argument("--spin", action=argparse.BooleanOptionalAction, default=True, help=SPIN_HELP)
    p.add_argument("--fold", action="store_true", help=FOLD_HELP)
