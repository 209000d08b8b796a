"""The machine: CPU, memory and load for the report, and its fp32 GEMM, int8 GEMM and copy-bandwidth peaks.

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
        "simd": [
            f
            for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
            if f in flags
        ],
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
    }


def hardware_peaks(threads: int = 2) -> dict:
    """fp32 GEMM peak (best of torch and numpy, `threads` threads), ORT's fp32 and int8 GEMMs, torch bf16, bandwidth."""
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
    int8_ops = int8_gemm_ops(n, reps=8, threads=threads)
    ort_fp32 = ort_gemm_ops(n, reps=8, threads=threads)
    ab, bb = a.bfloat16(), b.bfloat16()
    torch.mm(ab, bb)
    best_bf16 = min(_timed(lambda: torch.mm(ab, bb)) for _ in range(8))
    return {
        "int8_gemm_peak_ops": int8_ops,
        "gemm_ort_flops": ort_fp32,  # MLAS's SGEMM, what edgetune's fp32 training runs on
        "gemm_torch_bf16_flops": flops / best_bf16,  # what PyTorch's bf16 autocast runs on (AMX where present)
        "int8_path": int8_path(),
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


def int8_gemm_ops(n: int = 2048, reps: int = 3, threads: int = 2) -> float:
    """Best int8 OP/s of ONNX Runtime's MatMulInteger, uint8 (n, n) x int8 constant (n, n), zero point 128.

    The u8·s8 GEMM that int8 compute runs (MLAS; `int8_path` says which kernel). Multiply
    and add count as two operations, as in FLOP/s. ORT only: runs in the torch-free child.
    """
    return ort_gemm_ops(n, reps, threads, int8=True)


def ort_gemm_ops(n: int = 2048, reps: int = 3, threads: int = 2, int8: bool = False) -> float:
    """Best OP/s of an (n, n) x constant (n, n) product in ONNX Runtime: MatMulInteger (int8) or MatMul (MLAS SGEMM)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "w")
        inits = [weight, numpy_helper.from_array(np.array(128, np.uint8), "zero_point")]
        node = helper.make_node("MatMulInteger", ["x", "w", "zero_point"], ["y"])
        x_type, y_type, x = TensorProto.UINT8, TensorProto.INT32, rng.integers(0, 256, (n, n)).astype(np.uint8)
    else:
        inits = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_type, y_type, x = TensorProto.FLOAT, TensorProto.FLOAT, rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", x_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})
    return 2 * n**3 / min(_timed(lambda: session.run(None, {"x": x})) for _ in range(reps))


def int8_path() -> str:
    """Which MLAS kernel runs ORT's u8·s8 GEMMs here (call after an ORT session exists).

    MLAS (ORT 1.19) picks AMX when the CPU has AMX-TILE and AMX-INT8 and Linux grants the
    process the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, which MLAS asks for when it
    initializes: read back here), else AVX512-VNNI, AVX-VNNI, or AVX2's vpmaddubsw.
    """
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split())
    if _amx_granted():
        return "AMX-INT8"
    for flag, name in (("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2 (no VNNI)")):
        if flag in flags:
            return name
    return "SSE"


def _amx_granted() -> bool:
    """Linux has granted this process AMX tile data (XFEATURE 18)."""
    import ctypes

    if not Path("/proc/cpuinfo").read_text().count("amx_int8"):
        return False
    mask = ctypes.c_ulong(0)
    arch_prctl, get_xcomp_perm, tile_data = 158, 0x1022, 1 << 18
    return ctypes.CDLL(None).syscall(arch_prctl, get_xcomp_perm, ctypes.byref(mask)) == 0 and bool(
        mask.value & tile_data
    )


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    print(json.dumps(hardware_peaks(json.loads(sys.argv[2]).get("threads", 2))), flush=True)
