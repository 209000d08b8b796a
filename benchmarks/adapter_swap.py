"""Time `Generator.set_adapter` on a bundle: hot swaps between two adapters and back to the base.

    python benchmarks/adapter_swap.py [BUNDLE] [--swaps 20]

The adapters are random, of the bundle's own shapes, saved in PEFT's format. Prints the
median and the worst swap; the target on SmolLM2-135M is under 100 ms.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import save_adapter
from edgetune.runtime.generate import Generator


def random_adapters(bundle: Path, folder: Path, n: int = 2) -> list[Path]:
    """Save `n` random adapters fitting `bundle`; return their folders."""
    manifest = read_manifest(bundle)
    g = Generator(bundle)
    shapes = {k: v.shape for k, v in g._extra_feeds.items() if ".lora_" in k}  # graph layout (transposed)
    rank = manifest["adapter_config"]["r"]
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        weights = {
            k: rng.standard_normal((s[1], rank) if ".lora_B." in k else (rank, s[0])).astype(np.float32)
            for k, s in shapes.items()
        }
        save_adapter(folder / f"a{i}", weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
        paths.append(folder / f"a{i}")
    return paths


def main() -> None:
    """Run the swaps and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", nargs="?", default="artifacts/smollm2")
    parser.add_argument("--swaps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapters = random_adapters(Path(args.bundle), Path(tmp))
        g = Generator(args.bundle)
        times = []
        for i in range(args.swaps):
            target = None if i % 5 == 4 else adapters[i % 2]
            start = time.perf_counter()
            g.set_adapter(target)
            times.append(time.perf_counter() - start)
    print(
        f"set_adapter on {args.bundle}: median {statistics.median(times) * 1e3:.1f} ms, "
        f"max {max(times) * 1e3:.1f} ms over {args.swaps} swaps (target < 100 ms)"
    )


if __name__ == "__main__":
    main()
