"""ONNX Runtime inference sessions for decoding: threads, options, and the graph's input types."""

import contextlib
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgetune.common.errors import BundleError
from edgetune.runtime.ort_errors import ORT_ERRORS, gist

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
COPIED_OPTIONS = (  # what `copy_session_options` carries over
    "intra_op_num_threads",
    "inter_op_num_threads",
    "execution_mode",
    "graph_optimization_level",
    "enable_cpu_mem_arena",
    "enable_mem_pattern",
    "log_severity_level",
)
SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def physical_cores() -> int:
    """Physical cores this process may run on (Linux sysfs topology), else the logical CPU count."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def default_session_options(spin: bool = False) -> ort.SessionOptions:
    """One intra-op thread per physical core, sequential execution, all graph optimizations; spin-waiting if `spin`.

    Spinning threads decode much faster on a device that does nothing else, and much
    slower when another process wants the cores (docs/design.md, "Decoding threads"), so
    the default is not to spin.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = physical_cores()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def copy_session_options(options: ort.SessionOptions) -> ort.SessionOptions:
    """New options with `options`' threads, spinning, execution mode, optimization level and memory settings
    (initializers added to `options` stay behind: ORT refuses a name added twice)."""
    copy = ort.SessionOptions()
    for attr in COPIED_OPTIONS:
        setattr(copy, attr, getattr(options, attr))
    for key in SPIN_KEYS:
        with contextlib.suppress(RuntimeError):  # not set: ORT's default
            copy.add_session_config_entry(key, options.get_session_config_entry(key))
    return copy


def open_session(model_file: Path, session_options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU inference session on `model_file` (default options unless given); a graph ORT cannot load is one line."""
    try:
        options = session_options or default_session_options()
        return ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"], sess_options=options)
    except ORT_ERRORS as e:
        raise BundleError(f"{model_file}: ONNX Runtime cannot load it ({gist(e)})") from None


def input_dtype(spec, model_file) -> type:
    """The numpy type of a graph input, or a one-line error for a type decoding cannot feed."""
    dtype = DTYPES.get(spec.type)
    if dtype is None:
        raise BundleError(f"{model_file}: input {spec.name} has unsupported type {spec.type}")
    return dtype
