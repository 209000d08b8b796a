"""int8 compute's training loss at fixed parameters: one trained adapter, the same batches, fp32 and int8 compute.

    .venv/bin/python benchmarks/int8_fixed_params.py [--batches 12]

Needs `benchmarks/int8_accuracy.py`'s bundles and runs (artifacts/int8_accuracy). For each
pair (QLoRA-int8 with fp32 and with int8 compute: the same int8 weights; LoRA with fp32
and with int8 compute: float weights against int8 ones), the fp32 twin's trained adapter is
loaded into both training graphs and the loss of each of the first training batches (the
demo's data, batch 8, seq-len 64) is computed without an optimizer step. The relative
difference (int8 / fp32 − 1) separates what the arithmetic changes at one point from how
far two training runs' trajectories part.
"""

import argparse
from pathlib import Path

import numpy as np

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter
from edgetune.runtime.batching import encode_examples, load_tokenizer, make_batches
from edgetune.runtime.bundle_checkpoint import batch_losses
from edgetune.runtime.data import read_examples

ROOT = Path(__file__).resolve().parent.parent / "artifacts" / "int8_accuracy"
PAIRS = [("QLoRA-int8", "QLoRA-int8-int8-compute"), ("LoRA", "LoRA-int8-compute")]  # fp32 twin, int8 compute


def demo_batches(bundle: Path, data: Path, count: int) -> list:
    """The first `count` training batches of 8 × 64, as `edgetune train` makes them (twins share a tokenizer)."""
    tokenizer, info = load_tokenizer(bundle)
    examples, _ = read_examples(data)
    encoded, _ = encode_examples(examples[: 8 * count], tokenizer, info, 64)
    return make_batches(encoded, 8, 0, 0, info.pad_id)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    data = ROOT / "data" / "train.jsonl"
    print("| pair (adapter: the fp32 twin's, trained) | fp32 losses (range) | int8 / fp32 − 1: mean abs, largest |")
    print("|---|---|---|")
    for fp32, int8 in PAIRS:
        adapter, _ = load_adapter(ROOT / f"{fp32}-run" / "adapter", read_manifest(ROOT / fp32))
        batches = demo_batches(ROOT / fp32, data, args.batches)
        a, b = (np.array(batch_losses(ROOT / name, adapter, batches, train=True)) for name in (fp32, int8))
        d = np.abs(b / a - 1)
        print(f"| {fp32} | {a.min():.4f}–{a.max():.4f} | {d.mean():.2%}, {d.max():.2%} |")


if __name__ == "__main__":
    main()
