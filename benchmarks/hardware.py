"""The machine: CPU, memory and load for the report, and its fp32 GEMM and copy-bandwidth peaks.

`python benchmarks/hardware.py child '{"threads": 2}'` measures the peaks in a child.
"""

import json
import os
import sys
import time
from pathlib import Path


def machine() -> dict:
    """nproc, CPU model, memory, load average and versions, for the report."""
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_bytes": total,
        "simd": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
    }


def hardware_peaks(threads: int = 2) -> dict:
    """fp32 GEMM peak (best of torch and numpy, `threads` threads) and memory bandwidth (numpy copy)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    n = 2048
    flops = 2 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best_torch = min(_timed(lambda: torch.mm(a, b)) for _ in range(8))
    na, nb = a.numpy(), b.numpy()
    na @ nb
    best_numpy = min(_timed(lambda: na @ nb) for _ in range(5))
    size = 512 * 2**20  # 512 MiB, far above any cache
    src = np.ones(size // 8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best_copy = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    return {
        "gemm_n": n,
        "gemm_torch_flops": flops / best_torch,
        "gemm_numpy_flops": flops / best_numpy,
        "gemm_peak_flops": flops / min(best_torch, best_numpy),
        "copy_bytes": size,
        "mem_bandwidth_bytes_per_s": 2 * size / best_copy,
    }  # read + write


def gemm_flops(n: int = 2048, reps: int = 3) -> float:
    """Best fp32 FLOP/s of an n x n numpy matmul (numpy only: also runs in the torch-free child).

    Each training child calls this just before and after its timed steps, so that the run's
    GEMM peak is sampled under the same (shared-machine) conditions as the contenders.
    """
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    return 2 * n**3 / min(_timed(lambda: a @ a) for _ in range(reps))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(hardware_peaks(json.loads(sys.argv[2]).get("threads", 2))), flush=True)
