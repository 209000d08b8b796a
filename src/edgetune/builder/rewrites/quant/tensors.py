"""How quantized weights live in a graph: their initializer names, packing, and small graph helpers."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgetune.builder.weights import WeightFiles
from edgetune.common.int4 import pack_nibbles
from edgetune.common.onnx_graph import (  # noqa: F401 (re-exported)
    CONTRIB,
    drop_unused_initializers,
    is_float_matrix,
    use_contrib_opset,
)

UINT4_IR_VERSION = 10  # the first IR version with 4-bit tensors; ORT 1.19 reads up to 10


def quantized_tensor_names(module: str) -> dict[str, str]:
    """Initializer names of one module's quantized weight, shared by every graph of a bundle."""
    return {part: f"/quant/{module}/{part}" for part in ("q", "scale", "offset")}


def read_quantized(inits: dict[str, np.ndarray], module: str) -> dict[str, np.ndarray]:
    """A module's quantized tensors from an initializer dict (4-bit q comes back one value a byte)."""
    out = {part: inits[name] for part, name in quantized_tensor_names(module).items() if name in inits}
    if out["q"].dtype.fields or out["q"].dtype.names:  # onnx's uint4 numpy type
        out["q"] = np.asarray(out["q"]).view(np.uint8)
    return out


def add_quantized(graph, path: str, tensors: dict[str, np.ndarray], files: WeightFiles) -> dict[str, str]:
    """Add a Linear's quantized tensors as initializers (q of int4 as UINT4), large ones to `files`' store.

    Returns part -> name.
    """
    names = quantized_tensor_names(path)
    for part, array in tensors.items():
        if part == "q" and "offset" in tensors:  # two values a byte, low nibble first
            packed = pack_nibbles(array).tobytes()
            files.add(graph, helper.make_tensor(names[part], TensorProto.UINT4, list(array.shape), packed, raw=True))
        else:
            files.add_array(graph, names[part], array)
    return {part: names[part] for part in tensors}


def declare_float(graph: onnx.GraphProto, name: str, shape: tuple[int, ...]) -> None:
    """Record a dequantized weight's float shape: ORT cannot infer through the contrib DequantizeLinear."""
    graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [int(d) for d in shape]))
