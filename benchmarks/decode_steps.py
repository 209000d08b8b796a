"""Decode step time of serving graphs at 1 and N rows, interleaved: `python benchmarks/decode_steps.py NAME=BUNDLE ...`.

    python benchmarks/decode_steps.py [--rows 1 8] [--rounds 3] NAME=BUNDLE[,spin][,full][,threads=N] ...

`,spin`: the engine's threads spin-wait between ops; `,full`: no lean graph (base-model
steps run on the full serving graph, with the adapter bank and the prompt prefix);
`,threads=N`: N intra-op threads instead of one per physical core.

For graphs of one model (int4 forms, accuracy levels, int8 kernels): each engine decodes 100
greedy tokens in every row after the same 128-token prompt, one engine and row count after
another, `--rounds` rounds; prints the median decode step of each round per bundle and row
count, the aggregate tokens/s of N rows against one row's (N·step(1) / step(N), from the
rounds' medians), and the load average before and after. Interleaving spreads the load of a
shared machine over every graph alike, so ratios between them hold.
"""

import argparse
import os
import statistics
import time

from edgetune.runtime.engine import Engine
from edgetune.runtime.ort_inference import default_session_options
from edgetune.runtime.sampling import SamplingParams

NEW_TOKENS = 100


def step_ms(engine: Engine, rows: int, adapter: str | None = None) -> float:
    """Median decode step (ms) of `rows` rows decoding together after the same 128-token prompt (with `adapter`)."""
    prompt = engine.encode("The history of the sea is long and " * 20)[:128]
    greedy = SamplingParams(temperature=0)
    for i in range(rows):
        engine.add(f"r{i}", prompt, adapter=adapter, sampling=greedy, max_new_tokens=NEW_TOKENS + 1)
    times = []
    while engine.has_work:
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:]) * 1000  # decode steps only (the prompts' prefill comes first)


def _engine(value: str, rows: int) -> Engine:
    """The engine for BUNDLE[,spin][,full][,threads=N]."""
    path, *flags = value.split(",")
    threads = [int(f.split("=", 1)[1]) for f in flags if f.startswith("threads=")]
    unknown = {f for f in flags if not f.startswith("threads=")} - {"spin", "full"}
    if unknown:
        raise SystemExit(f"unknown engine flags {sorted(unknown)} in {value!r} (spin, full, threads=N)")
    options = default_session_options("spin" in flags)
    if threads:
        options.intra_op_num_threads = threads[0]
    return Engine(path, max_batch=rows, session_options=options, lean="full" not in flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="NAME=BUNDLE[,spin][,full]")
    parser.add_argument("--rows", nargs="+", type=int, default=[1])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bundles = dict(arg.split("=", 1) for arg in args.bundles)
    engines = {name: _engine(value, max(args.rows)) for name, value in bundles.items()}
    steps: dict[tuple[str, int], list[float]] = {(name, rows): [] for name in bundles for rows in args.rows}
    print("load average", os.getloadavg())
    for _ in range(args.rounds):
        for name, engine in engines.items():
            for rows in args.rows:
                steps[name, rows].append(step_ms(engine, rows))
    for (name, rows), rounds in steps.items():
        median = statistics.median(rounds)
        gain = rows * statistics.median(steps[name, args.rows[0]]) / median / args.rows[0]
        print(
            f"{name:16s} {rows} rows: step ms {' '.join(f'{t:.2f}' for t in rounds)}  "
            f"tokens/s {1000 * rows / median:.1f}  ({gain:.2f}x {args.rows[0]} row(s))"
        )
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
