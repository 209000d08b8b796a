"""Run only the decode comparison: `python benchmarks/decode_run.py [--rounds N] [--quants ...] [--only ...]`.

The same contenders and figures as `run.py --only hardware decode`, for the serving graphs
already built (artifacts/smollm2-<quant>); the results go to artifacts/bench/decode-<time>.json.
"""

import argparse
import json
import os
import sys
import time

import children
import decode
import flops
import workloads
from edgetune.common.embedded import smollm2_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quants", nargs="+", default=["int4", "none", "int8"])
    parser.add_argument("--only", nargs="+", default=None, help="contender names to keep")
    parser.add_argument("--spin", action="store_true", help="each edgetune contender also with spin-waiting threads")
    parser.add_argument(
        "--ttft-prompts", nargs="+", type=int, default=list(decode.TTFT_PROMPTS), help="prompt lengths for TTFT"
    )
    args = parser.parse_args()
    started = {"loadavg": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    hardware = children.run_child(children.child_cmd("hardware.py", {"threads": 2}), timeout=300, env=children.NO_SPIN)
    bundles = {q if q != "none" else "fp32": workloads.ensure_smollm2_serving(q) for q in args.quants}
    adapters = workloads.random_adapters(next(iter(bundles.values())))
    points = decode.contenders(
        bundles, workloads.ensure_smollm2_hf(), smollm2_gguf(), adapters, ttft_prompts=args.ttft_prompts, spin=args.spin
    )
    if args.only:
        points = {k: v for k, v in points.items() if k in args.only}
    figures = decode.measure(points, args.rounds)
    bandwidth = (hardware["result"] or {}).get("mem_bandwidth_bytes_per_s")
    weight_bytes = 4 * flops.matmul_params(workloads.read_config(workloads.SMOLLM2_HF))
    figures["weight_bytes_per_token"] = weight_bytes
    if bandwidth and figures.get("edgetune-fp32", {}).get("decode_tokens_per_s"):
        figures["bound_tokens_per_s"] = bandwidth / weight_bytes
        figures["edgetune-fp32"]["fraction_of_bound"] = (
            figures["edgetune-fp32"]["decode_tokens_per_s"] / figures["bound_tokens_per_s"]
        )
    results = {"started": started, "hardware": hardware["result"], "decode": figures, "loadavg_end": os.getloadavg()}
    out = children.BENCH / f"decode-{time.strftime('%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    children.log(f"results in {out}")
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    sys.exit(main())
