"""Where a training step's time goes, by ONNX Runtime op type: fp32 compute against int8 compute.

    .venv/bin/python benchmarks/int8_profile.py [--batch 2] [--seq-len 512] [--steps 3]

Trains the benchmark's SmolLM2 bundles (`workloads.ensure_smollm2_bundle`: r=8 on q/v, with
`--compute fp32` and `--compute int8`) on the training benchmark's fixed batch, with ORT's
profiler on (`SessionOptions.enable_profiling`), one warm-up step then `--steps` profiled
steps, each bundle in its own child process. Sums the profiler's node events (`cat` "Node",
kernel time only) by op type and prints, per op type, ms per step for both bundles. The
int8 GEMMs are `MatMulIntegerToFloat`; the per-row quantization of activations is the
Abs, ReduceMax, Max, Mul, Reshape, Shape, ConstantOfShape, QuantizeLinear,
DequantizeLinear and Sub nodes named /int8/. Results: docs/design.md, "int8 compute".
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import workloads

INT8_PREFIX = "/int8"


def after_warm_up(events: list) -> list:
    """One session's profile events from its second run on (the first run is the warm-up step)."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    return [e for e in events if len(runs) > 1 and e["ts"] >= runs[1]]


def profile(bundle: Path, batch: int, seq_len: int, steps: int) -> dict:
    """{op type: ms per step} of the profiled steps (int8 compute's row quantization as its own entry)."""
    import numpy as np

    from edgetune.common.names import CHECKPOINT, EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL
    from edgetune.runtime.ort_training import CheckpointState, Module, Optimizer, training_session_options

    config = workloads.read_config(bundle)
    ids, labels = workloads.fixed_batch(batch, seq_len, config["vocab_size"])
    mask, positions = np.ones_like(ids), np.tile(np.arange(seq_len, dtype=np.int64), (batch, 1))
    with tempfile.TemporaryDirectory() as tmp:
        options = training_session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        state = CheckpointState.load_checkpoint(str(bundle / CHECKPOINT))
        module = Module(str(bundle / TRAINING_MODEL), state, str(bundle / EVAL_MODEL), session_options=options)
        optimizer = Optimizer(str(bundle / OPTIMIZER_MODEL), module)
        module.train()
        times = []
        for _ in range(1 + steps):
            t = time.perf_counter()
            module(ids, mask, positions, labels)
            optimizer.step()
            module.lazy_reset_grad()
            times.append(time.perf_counter() - t)
        del optimizer, module  # writes the profiles: one per session, each timed from its own start
        events = []
        for path in Path(tmp).glob("profile*.json"):
            events += after_warm_up(json.loads(path.read_text()))
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        if e["name"].startswith(INT8_PREFIX) and op != "MatMulIntegerToFloat":
            op = "int8 row quantization (/int8/ elementwise)"
        by_op[op] += e["dur"] / 1e3 / steps
    return {"ms_per_step": dict(by_op), "step_s": sorted(times[1:])[len(times[1:]) // 2], "load": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(profile(Path(args.child), args.batch, args.seq_len, args.steps)))
        return
    bundles = {c: workloads.ensure_smollm2_bundle(compute=c) for c in ("fp32", "int8")}
    results = {}
    for compute, bundle in bundles.items():
        command = [sys.executable, __file__, "--child", str(bundle)]
        command += ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[compute] = json.loads(out.strip().splitlines()[-1])
    fp32, int8 = results["fp32"]["ms_per_step"], results["int8"]["ms_per_step"]
    print(f"batch {args.batch} x {args.seq_len}, {args.steps} profiled steps after 1 warm-up")
    for compute, r in results.items():
        total = sum(r["ms_per_step"].values())
        print(
            f"- {compute}: step {r['step_s']:.2f} s (median), kernels {total / 1e3:.2f} s/step, load {r['load'][0]:.1f}"
        )
    print("\n| op type | fp32 compute ms/step | int8 compute ms/step |\n|---|---|---|")
    for op in sorted(set(fp32) | set(int8), key=lambda o: -max(fp32.get(o, 0), int8.get(o, 0))):
        if max(fp32.get(op, 0), int8.get(op, 0)) >= 5:
            print(f"| {op} | {fp32.get(op, 0):.0f} | {int8.get(op, 0):.0f} |")
    rest = [o for o in set(fp32) | set(int8) if max(fp32.get(o, 0), int8.get(o, 0)) < 5]
    print(
        f"| {len(rest)} other op types | {sum(fp32.get(o, 0) for o in rest):.0f} | "
        f"{sum(int8.get(o, 0) for o in rest):.0f} |"
    )


if __name__ == "__main__":
    main()
