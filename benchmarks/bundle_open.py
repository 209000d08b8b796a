"""What checking a bundle costs at start-up: open_bundle hashing every file vs trusting the verify cache.

    python benchmarks/bundle_open.py artifacts/smollm2-trust [--repeats 5]

Side by side in one run, alternating: open_bundle with no verify cache (every file hashed,
every graph's external data checked), open_bundle with the cache, and a whole
`Generator(bundle)` start-up each way. The page cache is warm in both (the bundle was read
just before), so the uncached figure is the hashing itself, not the disk.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from edgetune.common.bundle import open_bundle
from edgetune.common.names import VERIFY_CACHE
from edgetune.runtime.generate import Generator


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cache = args.bundle / VERIFY_CACHE
    size = sum(p.stat().st_size for p in args.bundle.iterdir() if p.is_file() and p.name != VERIFY_CACHE)
    results = {"open, no cache": [], "open, cached": [], "Generator, no cache": [], "Generator, cached": []}
    open_bundle(args.bundle)  # warm the page cache and write the record
    for _ in range(args.repeats):
        cache.unlink(missing_ok=True)
        results["open, no cache"].append(timed(lambda: open_bundle(args.bundle)))
        results["open, cached"].append(timed(lambda: open_bundle(args.bundle)))
        cache.unlink(missing_ok=True)
        results["Generator, no cache"].append(timed(lambda: Generator(args.bundle)))
        results["Generator, cached"].append(timed(lambda: Generator(args.bundle)))
    report = {name: statistics.median(values) for name, values in results.items()}
    report["bundle_mb"] = size / 1e6
    report["load_average"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    print(
        f"open: {report['open, no cache']:.3f} s uncached, {report['open, cached'] * 1e3:.1f} ms cached "
        f"({report['open, no cache'] / report['open, cached']:.0f}x); Generator start-up "
        f"{report['Generator, no cache']:.2f} s -> {report['Generator, cached']:.2f} s"
    )


if __name__ == "__main__":
    main()
