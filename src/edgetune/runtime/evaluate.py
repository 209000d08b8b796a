"""Exact-match evaluation of prompt/completion data: greedy answers against references."""

import time
from dataclasses import dataclass
from pathlib import Path

from edgetune.common.errors import DataError
from edgetune.common.names import SERVE_MODEL
from edgetune.runtime.data import read_examples
from edgetune.runtime.engine import Engine
from edgetune.runtime.generate import Generator
from edgetune.runtime.ort_inference import default_session_options

ADAPTER = "adapter"  # the name open_decoder loads its adapter under


def open_decoder(
    bundle: Path, adapter: Path | None = None, spin: bool = False, fold: bool = False
) -> Engine | Generator:
    """The bundle's batched decode engine, `adapter` loaded as ADAPTER (folded into the weights if `fold`);
    a Generator where the folder has no serving graph (a merged model folder, an older bundle)."""
    if not (Path(bundle) / SERVE_MODEL).is_file():
        return Generator(bundle, adapter=adapter, session_options=default_session_options(spin))
    engine = Engine(bundle, spin=spin)
    if adapter is not None:
        engine.load_adapter(ADAPTER, adapter)
        if fold:
            engine.fold_adapter(ADAPTER)
    return engine


@dataclass
class ExactMatch:
    """Accuracy over a data set, with every (prompt, prediction, reference) kept for display."""

    accuracy: float
    rows: list[tuple[str, str, str]]
    seconds: float


def evaluate_exact_match(
    generator: Generator | Engine,
    data: Path,
    max_new_tokens: int = 16,
    limit: int | None = None,
    adapter: str | None = None,
) -> ExactMatch:
    """Greedy-decode each prompt (stopping at a newline) and compare with its completion.

    An Engine decodes the prompts batched (`adapter`: the name of one it has loaded); a
    Generator one at a time, with its own adapter.
    """
    examples, _ = read_examples(data)
    examples = [e for e in examples if "prompt" in e][:limit]
    if not examples:
        raise DataError(f"{data}: exact match needs prompt/completion examples")
    start = time.perf_counter()
    if isinstance(generator, Engine):
        prompts = [generator.encode(e["prompt"]) for e in examples]
        predictions = generator.generate_many(prompts, adapter, max_new_tokens=max_new_tokens, stop=["\n"])
    else:
        predictions = [generator.generate(e["prompt"], max_new_tokens=max_new_tokens, stop=["\n"]) for e in examples]
    rows = [(e["prompt"], p, e["completion"]) for e, p in zip(examples, predictions)]
    hits = sum(exact_match(p, r) for _, p, r in rows)
    return ExactMatch(hits / len(rows), rows, time.perf_counter() - start)


def _first_line(text: str) -> str:
    """Leading whitespace dropped, then everything from the first newline on, then trailing space."""
    return text.lstrip().split("\n", 1)[0].strip()


def exact_match(prediction: str, reference: str) -> bool:
    """True if the prediction's first non-blank line equals the reference, ignoring outer whitespace."""
    return _first_line(prediction) == _first_line(reference)
