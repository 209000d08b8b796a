"""Serving accuracy and eval speed: exact match and perplexity per serving graph; eval time vs one at a time.

    python benchmarks/serve_accuracy.py ADAPTER HELDOUT.jsonl NAME=BUNDLE [NAME=BUNDLE ...]
For each bundle (the same base and training graphs, serving graphs int4 / int8 / none):
held-out exact match with the trained adapter (greedy, <= 16 tokens, stop at a newline),
decoded batched by the engine (max_batch 8), and its wall time; perplexity of a fixed text
(the first 512 tokens of the dates task's text, seed 0) with and without the adapter.
The first bundle is also evaluated the previous way (`Generator`, one prompt at a time on
inference.onnx), for the eval speed-up (SKIP_ONE_AT_A_TIME=1 skips it). Prints one JSON object.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import workloads
from edgetune.runtime.engine import Engine
from edgetune.runtime.evaluate import evaluate_exact_match
from edgetune.runtime.generate import Generator


def main() -> None:
    adapter, heldout = Path(sys.argv[1]), Path(sys.argv[2])
    bundles = dict(arg.split("=", 1) for arg in sys.argv[3:])
    text = workloads.text_tokens(512)
    results = {"loadavg_start": os.getloadavg()[0]}
    for name, bundle in bundles.items():
        engine = Engine(bundle, max_batch=8)
        engine.load_adapter("a", adapter)
        em = evaluate_exact_match(engine, heldout, adapter="a")
        results[name] = {
            "exact_match": em.accuracy,
            "eval_s": em.seconds,
            "perplexity_base": float(np.exp(-engine.token_logprobs(text).mean())),
            "perplexity_adapter": float(np.exp(-engine.token_logprobs(text, "a").mean())),
        }
        print(name, results[name], file=sys.stderr, flush=True)
    if os.environ.get("SKIP_ONE_AT_A_TIME"):
        print(json.dumps(results))
        return
    first = next(iter(bundles.values()))
    t = time.perf_counter()
    em = evaluate_exact_match(Generator(first, adapter=adapter), heldout)
    results["generator_one_at_a_time"] = {"exact_match": em.accuracy, "eval_s": time.perf_counter() - t}
    results["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
