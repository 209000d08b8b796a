"""Small ONNX graph-writing helpers used on both sides (the builder's rewrites, the runtime's merge)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONTRIB = "com.microsoft"


def module_path(node_name: str) -> str:
    """`/model/layers.0/self_attn/q_proj/MatMul` -> `model.layers.0.self_attn.q_proj`."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def add_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
    """Add a constant tensor to the graph and return its name."""
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def add_node(nodes: list, op: str, inputs: list[str], output: str, **attrs) -> str:
    """Append one node producing `output` and return that name."""
    nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
    return output


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (ai.onnx) opset version."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def is_float_matrix(tensor: onnx.TensorProto | None) -> bool:
    """`tensor` is a 2-D float32 constant (a Linear's weight, an embedding table)."""
    return tensor is not None and tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2


def use_contrib_opset(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft domain (MatMulNBits, MatMulIntegerToFloat, 4-bit DequantizeLinear, ...), once."""
    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads, in place (extending a new list would copy every tensor)."""
    used = {name for n in graph.node for name in n.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
