"""Batch-1 decode step time of serving graphs, interleaved: `python benchmarks/decode_steps.py NAME=BUNDLE ...`.

For graphs of one model (int4 forms, accuracy levels): each engine decodes 100 greedy tokens
after the same 128-token prompt, one engine after another, 3 rounds; prints the median step
of each round per bundle and the load average before and after. Interleaving spreads the
load of a shared machine over every graph alike, so ratios between them hold.
"""

import os
import statistics
import sys
import time

from edgetune.runtime.engine import Engine
from edgetune.runtime.sampling import SamplingParams

ROUNDS, NEW_TOKENS = 3, 100


def main() -> None:
    bundles = dict(arg.split("=", 1) for arg in sys.argv[1:])
    engines = {name: Engine(path, max_batch=1) for name, path in bundles.items()}
    steps_ms: dict[str, list[float]] = {name: [] for name in bundles}
    print("load average", os.getloadavg())
    for _ in range(ROUNDS):
        for name, engine in engines.items():
            prompt = engine.encode("The history of the sea is long and " * 20)[:128]
            engine.add("r", prompt, sampling=SamplingParams(temperature=0), max_new_tokens=NEW_TOKENS + 1)
            times = []
            while engine.has_work:
                start = time.perf_counter()
                engine.step()
                times.append(time.perf_counter() - start)
            steps_ms[name].append(statistics.median(times[2:]) * 1000)  # decode steps only
    for name, rounds in steps_ms.items():
        rate = 1000 / statistics.median(rounds)
        print(f"{name:16s} step ms {' '.join(f'{t:.2f}' for t in rounds)}  tokens/s {rate:.1f}")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
