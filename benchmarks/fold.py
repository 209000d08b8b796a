"""An adapter folded into the serving weights (`Engine.fold_adapter`): swap cost, decode speed, what the weights keep.

    python benchmarks/fold.py BUNDLE ADAPTER [--data HELDOUT.jsonl] [--rounds 3] [--swaps 5] [--spin]

- swap: the seconds `fold_adapter` takes, folding the adapter and back to the base model
  (median and worst of `--swaps` each);
- decode: the median batch-1 decode step after a 128-token prompt, interleaved round by
  round (`decode_steps.step_ms`): the base model (lean graph), the adapter unmerged (full
  graph) and folded (lean graph);
- kept: per adapted Linear, the error of its serving weight against W + ΔW (ΔW = A·B, the
  adapter's delta), relative to ‖ΔW‖: 0 keeps the delta exactly, 1 is as far off as
  dropping it. For int8 per output column (what folding writes) and for int4 in Q4_1
  blocks of 32 (what folding into an int4 bundle would write); mean and worst over modules;
- with --data: held-out exact match (greedy, batched) of the adapter unmerged and folded.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from decode_steps import step_ms
from edgetune.builder.rewrites.quant.formats import dequantize, quantize_int4
from edgetune.common.int8 import quantize_int8
from edgetune.runtime.engine import Engine
from edgetune.runtime.evaluate import evaluate_exact_match


def swap_seconds(engine: Engine, swaps: int) -> dict[str, list[float]]:
    """`swaps` times: fold the adapter in, then the base model back; the seconds of each."""
    times: dict[str, list[float]] = {"fold": [], "unfold": []}
    for _ in range(swaps):
        times["fold"].append(engine.fold_adapter("a"))
        times["unfold"].append(engine.fold_adapter(None))
    return times


def decode_steps(engine: Engine, rounds: int) -> dict[str, list[float]]:
    """Batch-1 decode step (ms) of the base model, the adapter unmerged and the adapter folded, interleaved."""
    steps: dict[str, list[float]] = {"base": [], "unmerged": [], "folded": []}
    for _ in range(rounds):
        engine.fold_adapter(None)
        steps["base"].append(step_ms(engine, 1))
        steps["unmerged"].append(step_ms(engine, 1, "a"))
        engine.fold_adapter("a")
        steps["folded"].append(step_ms(engine, 1, "a"))
    engine.fold_adapter(None)
    return steps


def kept_errors(engine: Engine) -> dict[str, list[float]]:
    """Per adapted module: ‖serving(W + ΔW) − (W + ΔW)‖ / ‖ΔW‖ for int8 per column and int4 blocks of 32."""
    errors: dict[str, list[float]] = {"int8": [], "int4": []}
    for module in engine.manifest["adapted_modules"]:
        a, b, _ = engine.bank.branch(module, engine.bank.names["a"])
        delta = a @ b  # (in, out)
        target = engine.bank.base_weight(module) + delta
        int8 = quantize_int8(target)
        int4 = dequantize(quantize_int4(target, 32), target.shape)
        for form, served in (("int8", int8["q"] * int8["scale"]), ("int4", int4)):
            errors[form].append(float(np.linalg.norm(served - target) / np.linalg.norm(delta)))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("adapter")
    parser.add_argument("--data", type=Path, default=None, help="held-out prompt/completion JSONL (exact match)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--spin", action="store_true")
    args = parser.parse_args()
    print("load average", os.getloadavg(), time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    engine = Engine(args.bundle, spin=args.spin)
    engine.load_adapter("a", args.adapter)
    for name, times in swap_seconds(engine, args.swaps).items():
        print(f"swap {name:7s} median {statistics.median(times):.2f} s, worst {max(times):.2f} s")
    steps = decode_steps(engine, args.rounds)
    base = statistics.median(steps["base"])
    for name, rounds in steps.items():
        median = statistics.median(rounds)
        print(
            f"decode {name:9s} step ms {' '.join(f'{t:.2f}' for t in rounds)}  tokens/s {1000 / median:.1f}"
            f"  ({base / median:.2f}x the base model's)"
        )
    for form, errors in kept_errors(engine).items():
        print(f"kept {form}: error / |delta| mean {np.mean(errors):.2f}, worst {max(errors):.2f}")
    if args.data:
        for folded in (False, True):
            engine.fold_adapter("a" if folded else None)
            result = evaluate_exact_match(engine, args.data, 16, None, adapter="a")
            print(f"exact match {'folded' if folded else 'unmerged'}: {result.accuracy:.1%} in {result.seconds:.1f} s")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
