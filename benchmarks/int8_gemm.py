"""int8 GEMMs in ONNX Runtime at SmolLM2's shapes: which ops, which MLAS kernel, how fast against fp32.

    .venv/bin/python benchmarks/int8_gemm.py [--tokens 1024] [--reps 20] [--rounds 3]

For each Linear shape of SmolLM2-135M (forward x·W, and the backward dY·Wᵀ's swapped
shape) at `--tokens` rows, the best time of `--reps` runs in each of `--rounds` rounds that
alternate the chains (2 threads, no spinning; one pass per chain varied up to 2× between
runs on a shared VM), of:

    fp32        MatMul(x, W), MLAS's SGEMM
    dynamic     DynamicQuantizeMatMul(x, q, s): activations quantized per tensor, fused
    per-tensor  DynamicQuantizeLinear + MatMulIntegerToFloat
    row         what int8 compute runs: x quantized per row (Abs, ReduceMax, QuantizeLinear)
                + MatMulIntegerToFloat + the row scales (a gradient, one pass)
    row x2      the same with the rounding residual quantized and multiplied too (a forward value)
    s8 row      the row chain with int8 activations (zero point 0) instead of uint8
    u8u8 row    the row chain with ORT's session.x64quantprecision (int8 weights stored as
                uint8, u8·u8 kernels: what a CPU without VNNI needs to be exact)

and the relative error of each against float64. Each measurement runs twice: as the CPU
comes, and with Linux refusing the process AMX's tile state (an LD_PRELOAD shim on
`syscall` turns MLAS's arch_prctl(ARCH_REQ_XCOMP_PERM) into EPERM, so MLAS falls back to
its AVX512-VNNI kernel), when the CPU has AMX. The shim is built with the system's cc
into artifacts/bench/. Results: docs/design.md, "int8 compute".
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
ROOT = Path(__file__).resolve().parents[1]
SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
/* Refuse AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023): MLAS then runs AVX512-VNNI. */
long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a[6];
    for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_arch_prctl && a[0] == 0x1023) { errno = EPERM; return -1; }
    static long (*real)(long, ...);
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""
SHAPES = {  # (in, out) of SmolLM2-135M's Linears
    "q_proj, o_proj": (576, 576),
    "k_proj, v_proj": (576, 192),
    "gate_proj, up_proj": (576, 1536),
    "down_proj": (1536, 576),
}


def models(k: int, n: int) -> dict:
    """name -> (ModelProto computing y (M, n) from x (M, k), the float64 weight it means)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetune.builder.rewrites.int8_compute import Int8Weights
    from edgetune.builder.rewrites.quant.formats import quantize_int8

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    int8 = quantize_int8(w)
    exact = int8["q"].astype(np.float64) * int8["scale"]
    found = {}

    def model(nodes, inits, name):
        graph = helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            inits,
        )
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
        return helper.make_model(graph, opset_imports=opsets, ir_version=8)

    q, s = numpy_helper.from_array(int8["q"], "q"), numpy_helper.from_array(int8["scale"], "s")
    found["fp32"] = (
        model([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")], "fp32"),
        w,
    )
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "q", "s"], ["y"], domain="com.microsoft")
    found["dynamic"] = (model([node], [q, s], "dynamic"), exact)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulIntegerToFloat", ["xq", "q", "xs", "s", "xz"], ["y"], domain="com.microsoft"),
    ]
    found["per-tensor"] = (model(nodes, [q, s], "per_tensor"), exact)
    for name, residual in (("row", False), ("row x2", True)):
        graph = helper.make_graph(
            [
                helper.make_node("DequantizeLinear", ["q", "s"], ["w"], domain="com.microsoft", axis=1),
                helper.make_node("MatMul", ["x", "w"], ["y"]),
            ],
            name,
            [],
            [],
            [q, s],
        )
        weights = Int8Weights(graph, residual=residual)
        nodes: list = []
        weights.product(nodes, graph.node[1])
        found[name] = (model(nodes, list(graph.initializer), name.replace(" ", "_")), exact)
    signed = [onnx.NodeProto() for _ in found["row"][0].graph.node]
    for n, original in zip(signed, found["row"][0].graph.node):  # the row chain, int8 activations (zero point 0)
        n.CopyFrom(original)
        if n.op_type == "ConstantOfShape":
            n.attribute[0].t.CopyFrom(helper.make_tensor("value", TensorProto.INT8, [1], [0]))
    inits = [t for t in found["row"][0].graph.initializer if t.name != "/int8/zero_point"]
    inits.append(numpy_helper.from_array(np.array(0, np.int8), "/int8/zero_point"))
    found["s8 row"] = (model(signed, inits, "s8_row"), exact)
    return found


def measure(tokens: int, reps: int, rounds: int) -> dict:
    """{shape: {op: (best seconds, relative error)}} for every SmolLM2 shape and its backward swap:
    the best of `reps` runs in each of `rounds` rounds that alternate the chains."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    exact = ort.SessionOptions()
    exact.intra_op_num_threads = 2
    exact.add_session_config_entry("session.intra_op.allow_spinning", "0")
    exact.add_session_config_entry("session.x64quantprecision", "1")
    out = {}
    for label, (k, n) in SHAPES.items():
        for direction, (kk, nn) in (("x·W", (k, n)), ("dY·Wᵀ", (n, k))):
            x = np.random.default_rng(1).standard_normal((tokens, kk)).astype(np.float32)
            variants = models(kk, nn)
            variants["u8u8 row"] = variants["row"]
            sessions, errors = {}, {}
            for name, (model, w) in variants.items():
                chosen = exact if name == "u8u8 row" else options
                sessions[name] = ort.InferenceSession(
                    model.SerializeToString(), chosen, providers=["CPUExecutionProvider"]
                )
                y, ref = sessions[name].run(None, {"x": x})[0], x.astype(np.float64) @ w
                errors[name] = float(np.abs(y - ref).max() / np.abs(ref).max())
            best = dict.fromkeys(sessions, float("inf"))
            for _ in range(rounds):  # the chains alternate, so a slow spell of the machine hits them all
                for name, session in sessions.items():
                    for _ in range(reps):
                        t = time.perf_counter()
                        session.run(None, {"x": x})
                        best[name] = min(best[name], time.perf_counter() - t)
            out[f"{label} {direction} {tokens}x{kk}x{nn}"] = {n: (best[n], errors[n]) for n in sessions}
    return out


def shim() -> Path | None:
    """The AMX-refusing LD_PRELOAD library, built once (None without a C compiler)."""
    target = ROOT / "artifacts" / "bench" / "no_amx.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        source = target.with_suffix(".c")
        source.write_text(SHIM_SOURCE)
        if subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(target), str(source), "-ldl"]).returncode:
            return None
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the chains; the best of all is kept")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import hardware

        result = measure(args.tokens, args.reps, args.rounds)
        print(json.dumps({"path": hardware.int8_path(), "shapes": result, "load": os.getloadavg()[0]}))
        return
    runs = []
    command = [sys.executable, __file__, "--child", "--tokens", str(args.tokens), "--reps", str(args.reps)]
    command += ["--rounds", str(args.rounds)]
    envs = [{}]
    if "amx_int8" in Path("/proc/cpuinfo").read_text() and (library := shim()) is not None:
        envs.append({"LD_PRELOAD": str(library)})
    for env in envs:
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for run in runs:
        print(f"\n### MLAS kernel: {run['path']} (load average {run['load']:.1f})\n")
        ops = list(next(iter(run["shapes"].values())))
        print("| shape | " + " | ".join(f"{op} ms (GOP/s, error)" for op in ops) + " |")
        print("|---|" + "---|" * len(ops))
        for shape, row in run["shapes"].items():
            m, k, n = map(int, shape.rsplit(" ", 1)[1].split("x"))
            cells = [f"{t * 1e3:.2f} ({2 * m * k * n / t / 1e9:.0f}, {e:.1e})" for t, e in row.values()]
            print(f"| {shape} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
