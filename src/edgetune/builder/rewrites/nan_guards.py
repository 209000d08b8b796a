"""Drop the exporter's NaN guards after attention's softmax from a training graph."""

import onnx
from onnx import numpy_helper

from edgetune.builder.graph import initializer_map


def drop_nan_guards(graph: onnx.GraphProto) -> int:
    """Remove the exporter's `Where(IsNaN(p), 0, p)` guards after attention's softmax.

    The guard zeroes rows whose keys are all masked (softmax of all -inf is NaN). Training
    batches are right-padded and every row starts with a real token, so no query row is
    fully masked and the guard never changes a value; but its output and its IsNaN mask
    are kept for the backward pass next to the softmax output: two more (B, H, S, S)
    tensors per layer. Only the training graph drops it; inference keeps it.
    """
    producers = {out: node for node in graph.node for out in node.output}
    inits = initializer_map(graph)
    renamed, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "Where" or node.input[0] not in producers:
            continue
        isnan, zero, guarded = producers[node.input[0]], node.input[1], node.input[2]
        zero_value = inits.get(zero) or _constant_value(producers.get(zero))
        if (
            isnan.op_type != "IsNaN"
            or isnan.input[0] != guarded
            or zero_value is None
            or numpy_helper.to_array(zero_value).any()
        ):
            continue
        renamed[node.output[0]] = guarded
        dropped |= {id(node)}
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    kept = [n for n in graph.node if id(n) not in dropped]
    used = {name for n in kept for name in n.input}
    kept = [n for n in kept if n.op_type not in ("IsNaN", "Constant") or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    return len(renamed)


def _constant_value(node) -> onnx.TensorProto | None:
    """The tensor of a `Constant` node with a `value` attribute, else None."""
    if node is None or node.op_type != "Constant":
        return None
    return next((a.t for a in node.attribute if a.name == "value"), None)
