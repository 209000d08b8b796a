"""ONNX Runtime's training API (CheckpointState, Module, Optimizer), without torch.

In onnxruntime-training 1.19.2, `onnxruntime/training/__init__.py` imports its `optim`
package, which imports torch (or fails where torch is absent); the `api` subpackage itself
needs only ORT's C module. Unless the package is already imported (by the build side),
`api` is loaded under a bare `onnxruntime.training` package instead.
"""

import sys
import types
from pathlib import Path


def _training_api() -> types.ModuleType:
    """`onnxruntime.training.api`, loaded without importing torch."""
    if "onnxruntime.training" not in sys.modules:
        import onnxruntime

        package = types.ModuleType("onnxruntime.training")
        package.__path__ = [str(Path(onnxruntime.__file__).parent / "training")]
        sys.modules["onnxruntime.training"] = package
    import onnxruntime.training.api as api
    return api


_api = _training_api()
CheckpointState, Module, Optimizer = _api.CheckpointState, _api.Module, _api.Optimizer


def training_session_options() -> "onnxruntime.SessionOptions":
    """Session options for a training Module: no spin-waiting, and a lean memory arena.

    Spinning threads waste the few cores of a shared device. ORT's CPU arena grows by
    powers of two by default; over one training step (activations pile up through the
    forward pass, then drain) that left about 330 MB more resident at batch 2 x seq 512
    on SmolLM2 than an arena that grows by what is asked, at the same speed. That arena
    is registered once per process and shared by the sessions that ask for it.
    """
    import onnxruntime as ort

    global _lean_arena
    if not _lean_arena:
        same_as_requested = 1  # OrtArenaCfg arena_extend_strategy
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, same_as_requested, -1, -1))
        _lean_arena = True
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


_lean_arena = False
