"""ONNX Runtime's exceptions, as one tuple, and their gist in one line.

ORT raises its own exception classes (Fail, InvalidGraph, InvalidProtobuf, ...), none of
them a RuntimeError. A graph or checkpoint from a bundle that ORT cannot load or run is
bad input, so callers turn these into one-line EdgetuneErrors naming the file.
"""

from onnxruntime.capi import onnxruntime_pybind11_state as _state

ORT_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    *(
        getattr(_state, name)
        for name in (
            "Fail",
            "InvalidArgument",
            "NoSuchFile",
            "NoModel",
            "EngineError",
            "RuntimeException",
            "InvalidProtobuf",
            "ModelLoaded",
            "NotImplemented",
            "InvalidGraph",
            "EPFail",
        )
        if hasattr(_state, name)
    ),
)


def gist(error: BaseException) -> str:
    """The last non-blank line of ORT's (often multi-line) message, at most 300 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]
