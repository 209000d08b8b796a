"""Exact-match evaluation of prompt/completion data: greedy answers against references."""

import time
from dataclasses import dataclass
from pathlib import Path

from edgetune.common.errors import DataError
from edgetune.runtime.data import read_examples
from edgetune.runtime.generate import Generator


@dataclass
class ExactMatch:
    """Accuracy over a data set, with every (prompt, prediction, reference) kept for display."""

    accuracy: float
    rows: list[tuple[str, str, str]]
    seconds: float


def evaluate_exact_match(
    generator: Generator, data: Path, max_new_tokens: int = 16, limit: int | None = None
) -> ExactMatch:
    """Greedy-decode each prompt (stopping at a newline) and compare with its completion."""
    examples, _ = read_examples(data)
    examples = [e for e in examples if "prompt" in e][:limit]
    if not examples:
        raise DataError(f"{data}: exact match needs prompt/completion examples")
    start, rows = time.perf_counter(), []
    for example in examples:
        prediction = generator.generate(example["prompt"], max_new_tokens=max_new_tokens, stop=["\n"])
        rows.append((example["prompt"], prediction, example["completion"]))
    hits = sum(exact_match(p, r) for _, p, r in rows)
    return ExactMatch(hits / len(rows), rows, time.perf_counter() - start)


def _first_line(text: str) -> str:
    """Leading whitespace dropped, then everything from the first newline on, then trailing space."""
    return text.lstrip().split("\n", 1)[0].strip()


def exact_match(prediction: str, reference: str) -> bool:
    """True if the prediction's first non-blank line equals the reference, ignoring outer whitespace."""
    return _first_line(prediction) == _first_line(reference)
