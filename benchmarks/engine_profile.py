"""Where a decode step's time goes, by ONNX op type, at 1 row and at N rows of the engine.

    python benchmarks/engine_profile.py artifacts/smollm2-int8 [--rows 1 8] [--new 40] [--prefill]

Each row count runs in this process with ORT's profiler on: the same 128-token prompt in
every row, greedy; the op times are summed over the last 30 runs (decode steps only, the
prompts' prefill runs come first) and printed per run. --prefill instead profiles the
prefill of that prompt alone: 4 prompts one after another, the last 3 runs.
"""

import argparse
import collections
import json
import os

import onnxruntime as ort

from edgetune.runtime.engine import Engine
from edgetune.runtime.sampling import SamplingParams

DECODE_RUNS = 30


def profile(bundle: str, rows: int, new: int, prefill: bool = False) -> dict:
    """{"run_ms": median decode run, "ops": {op type: ms per decode run}} for `rows` rows (or prefill runs)."""
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, f"/tmp/edgetune_profile_{rows}"
    options.intra_op_num_threads = 2
    engine = Engine(bundle, max_batch=rows, session_options=options)
    prompt = engine.encode("The history of the sea is long and " * 12)[:128]
    greedy = SamplingParams(temperature=0)
    for prompts in [[prompt]] * 4 if prefill else [[prompt] * rows]:
        engine.generate_many(prompts, sampling=greedy, max_new_tokens=1 if prefill else new)
    session = engine.sessions.full if prefill or engine.sessions.lean is None else engine.sessions.lean  # decode: lean
    with open(session.end_profiling()) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][
        -3 if prefill else -DECODE_RUNS :
    ]
    ops = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= runs[0]["ts"]:
            ops[e["args"]["op_name"]] += e["dur"] / 1000 / len(runs)
    return {"run_ms": sorted(r["dur"] / 1000 for r in runs)[len(runs) // 2], "ops": dict(ops.most_common())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle")
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new", type=int, default=40)
    parser.add_argument("--prefill", action="store_true", help="profile a 128-token prompt's prefill runs")
    parser.add_argument("--top", type=int, default=6, help="print this many op types")
    args = parser.parse_args()
    for rows in [1] if args.prefill else args.rows:
        result = profile(args.bundle, rows, max(args.new, DECODE_RUNS + 1), args.prefill)
        kind = "prefill of 128 tokens" if args.prefill else "decode run"
        print(f"{rows} rows: {kind} {result['run_ms']:.1f} ms (median), load {os.getloadavg()[0]:.1f}")
        for op, ms in list(result["ops"].items())[: args.top]:
            print(f"  {op:30s} {ms:7.2f} ms/run")


if __name__ == "__main__":
    main()
