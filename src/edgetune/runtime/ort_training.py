"""ONNX Runtime's training API (CheckpointState, Module, Optimizer), without torch.

In onnxruntime-training 1.19.2, `onnxruntime/training/__init__.py` imports its `optim`
package, which imports torch (or fails where torch is absent); the `api` subpackage itself
needs only ORT's C module. Unless the package is already imported (by the build side),
`api` is loaded under a bare `onnxruntime.training` package instead.
"""

import platform
import sys
import types
from pathlib import Path

import onnxruntime as ort

from edgetune.common.errors import BundleError, CheckpointError
from edgetune.runtime.ort_errors import ORT_ERRORS, gist


def _training_api() -> types.ModuleType:
    """`onnxruntime.training.api`, loaded without importing torch."""
    if "onnxruntime.training" not in sys.modules:
        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(Path(ort.__file__).parent / "training")]
        sys.modules["onnxruntime.training"] = package
    import onnxruntime.training.api as api

    return api


_api = _training_api()
CheckpointState, Module, Optimizer = _api.CheckpointState, _api.Module, _api.Optimizer


def training_session_options() -> ort.SessionOptions:
    """Session options for a training Module: no spin-waiting, no buffer reuse, exact int8 products.

    Spinning threads waste the few cores of a shared device. Buffer reuse ties short-lived
    forward buffers to tensors kept until the backward pass (docs/design.md, "Training memory").
    On x86 without VNNI, int8 compute's u8·s8 products would saturate (`exact_int8_needs_u8u8`).
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_reuse = False
    if exact_int8_needs_u8u8(platform.machine(), cpu_flags()):
        options.add_session_config_entry("session.x64quantprecision", "1")
    return options


def load_state(checkpoint: Path) -> "CheckpointState":
    """An ORT checkpoint, or a one-line CheckpointError if it cannot be read."""
    try:
        return CheckpointState.load_checkpoint(str(checkpoint))
    except ORT_ERRORS:
        raise CheckpointError(f"{checkpoint}: not a readable ORT checkpoint") from None


def open_module(training_model: Path, state, eval_model: Path | None, options: ort.SessionOptions) -> "Module":
    """ORT's training Module, or a one-line BundleError naming the graph it cannot load."""
    try:
        return Module(str(training_model), state, str(eval_model) if eval_model else None, session_options=options)
    except ORT_ERRORS as e:
        raise BundleError(f"{training_model}: ONNX Runtime cannot train with it ({gist(e)})") from None


def open_optimizer(optimizer_model: Path, module) -> "Optimizer":
    """ORT's Optimizer, or a one-line BundleError naming the graph it cannot load."""
    try:
        return Optimizer(str(optimizer_model), module)
    except ORT_ERRORS as e:
        raise BundleError(f"{optimizer_model}: ONNX Runtime cannot load it ({gist(e)})") from None


def exact_int8_needs_u8u8(machine: str, flags: set[str] | None) -> bool:
    """Whether ORT must run u8·s8 products as u8·u8 here (its session.x64quantprecision).

    Without VNNI or AMX, MLAS's x86 u8·s8 kernels add pairs of products in saturating 16-bit
    arithmetic (vpmaddubsw): 255·127·2 = 64770 is clamped to 32767, so int8 compute's
    products would be wrong. The option makes ORT store int8 weights as uint8 and use its
    exact u8·u8 kernels, about half as fast. With VNNI or AMX it would only slow them down.
    `flags` is None where the CPU's features cannot be read: then, on x86, be exact.
    docs/design.md, "int8 compute".
    """
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    return flags is None or not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None
