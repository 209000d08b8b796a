"""Quantized merges side by side: `python benchmarks/merge_quant.py BUNDLE ADAPTER --data HELDOUT [--rounds N]`.

For each of fp32, int8 and int4 (`edgetune merge [--quant Q]`): the merge's seconds and
weight bytes, held-out exact match (greedy, one prompt at a time, as `edgetune eval` runs a
merged folder), and batch-1 decode tokens/s over 128 new tokens after a fixed prompt,
measured in interleaved rounds (each round runs every model once) so drift hits all alike.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from edgetune.runtime.evaluate import evaluate_exact_match
from edgetune.runtime.generate import Generator
from edgetune.runtime.merge import merge
from edgetune.runtime.ort_inference import default_session_options

QUANTS = (None, "int8", "int4")
PROMPT = "Convert to ISO date: March 3rd 2021\nAnswer: 2021-03-03\n" * 4 + "Convert to ISO date:"
NEW_TOKENS = 128


def decode_tokens_per_s(generator: Generator, prompt_ids: list[int]) -> float:
    """Greedy tokens/s over NEW_TOKENS steps after `prompt_ids`: a run of 1 + NEW_TOKENS tokens less a run of 1."""
    generator.eos_token_ids = frozenset()  # always decode every token asked for
    seconds = []
    for new in (1, 1 + NEW_TOKENS):
        start = time.perf_counter()
        assert len(generator.generate_ids(prompt_ids, new)) == new
        seconds.append(time.perf_counter() - start)
    return NEW_TOKENS / (seconds[1] - seconds[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spin", action="store_true", help="threads spin-wait between ops")
    args = parser.parse_args()
    figures, generators = {"loadavg_start": os.getloadavg()}, {}
    with tempfile.TemporaryDirectory(prefix="merge-quant-") as tmp:
        for quant in QUANTS:
            name, out = quant or "fp32", Path(tmp) / (quant or "fp32")
            start = time.perf_counter()
            manifest = merge(args.bundle, args.adapter, out, quant=quant)
            row = figures[name] = {"merge_s": time.perf_counter() - start}
            row["weight_mb"] = sum(f["size"] for f in manifest["files"].values()) / 1e6
            generators[name] = Generator(out, session_options=default_session_options(args.spin))
            row["exact_match"] = evaluate_exact_match(generators[name], args.data).accuracy
        prompt_ids = generators["fp32"].encode(PROMPT)
        for _ in range(args.rounds):
            for name, generator in generators.items():
                figures[name].setdefault("decode_rounds", []).append(decode_tokens_per_s(generator, prompt_ids))
    for name in generators:
        figures[name]["decode_tokens_per_s"] = statistics.median(figures[name]["decode_rounds"])
        figures[name]["decode_vs_fp32"] = figures[name]["decode_tokens_per_s"] / statistics.median(
            figures["fp32"]["decode_rounds"]
        )
    figures["loadavg_end"] = os.getloadavg()
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
