"""ONNX Runtime's training API (CheckpointState, Module, Optimizer), without torch.

In onnxruntime-training 1.19.2, `onnxruntime/training/__init__.py` imports its `optim`
package, which imports torch (or fails where torch is absent); the `api` subpackage itself
needs only ORT's C module. Unless the package is already imported (by the build side),
`api` is loaded under a bare `onnxruntime.training` package instead.
"""

import sys
import types
from pathlib import Path

import onnxruntime as ort


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
    """Session options for a training Module: no spin-waiting, and no buffer reuse.

    Spinning threads waste the few cores of a shared device. Buffer reuse ties short-lived
    forward buffers to tensors kept until the backward pass (docs/design.md, "Training memory").
    """
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_reuse = False
    return options
