"""The device side: training, adapters and generation on ONNX Runtime.

Never imports torch, transformers, optimum or peft (a test proves it).

Where torch is installed anyway (a dev box), onnxruntime-training 1.19.2's import-time
build check (`onnxruntime.capi.onnxruntime_validation`) imports ORTModule and with it all
of torch (docs/design.md, "The two sides"). The runtime does not need it, so onnxruntime
is first imported here with torch hidden; the check's ImportError is ORT's own "no
ORTModule" path. torch stays importable afterwards.
"""

import sys

if "onnxruntime" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import onnxruntime  # noqa: F401
    finally:
        del sys.modules["torch"]

from edgetune.runtime.tuner import Tuner

__all__ = ["Tuner"]
