"""Gradient checkpointing as a graph rewrite: each decoder layer is recomputed in the backward pass.

ORT keeps every forward tensor the gradient graph reads until the backward pass gets to
it: for every layer, its norms' outputs, Q, K, V, attention probabilities, the MLP's
activations. This rewrite keeps only what enters and leaves each layer (the residual
stream, plus the mask and rotary tensors every layer shares) and gives the layer's
gradient nodes a copy of the layer's forward nodes to read instead. The copy runs when
the backward pass reaches the layer, so one layer's activations are alive at a time:
the memory of PyTorch's `gradient_checkpointing_enable()`, for one more forward pass.

A layer is the forward nodes (ancestors of the loss) whose names carry its index, as the
exporter names them (`/model/layers.3/...`, `/transformer/h.3/...`; edgetune's own
`/lora/model.layers.3...`). The copy is delayed the way `recompute_attention` delays
its own: every tensor entering the copy goes through `Reshape(x, Shape(x) · 1)`, the 1
being computed from the gradient of the layer's output, which exists only once the
backward pass reaches the layer. Dropout is never copied (a copy would draw a new mask):
the copy reads the forward pass's dropout outputs, which are then kept. Nor is shape
arithmetic: the copy reads the forward's few integers.
"""

import re

import onnx

from edgetune.builder.graph import add_node, ancestors, constant_tensors, copy_node, topological
from edgetune.common.names import LOSS

SUFFIX = "/checkpointed"
# Dropout would draw a new mask; Shape (and the int64 arithmetic on its output, which then
# reads only kept tensors) is not worth recomputing: its results are a few integers, and
# copying it doubled each copy's node count (ORT holds ~5 KB per node).
NOT_COPIED = ("Dropout", "BitmaskDropout", "Shape")
LAYER = re.compile(r"[/.](?:layers|layer|h)\.(\d+)[/.]")  # the layer index in a node name (encoders: layer.N)


def recompute_layers(graph: onnx.GraphProto) -> int:
    """Rewrite a training graph (forward + gradient nodes) in place; return the layers rewritten."""
    nodes = list(graph.node)
    producers = {out: node for node in nodes for out in node.output}
    forward = ancestors([LOSS], producers)
    constants = constant_tensors(graph)
    layers: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        match = LAYER.search(node.name)
        if id(node) in forward and match:
            layers.setdefault(int(match.group(1)), []).append(node)
    backward_readers: dict[str, list[onnx.NodeProto]] = {}
    forward_readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            (forward_readers if id(node) in forward else backward_readers).setdefault(name, []).append(node)
    gradients = {out for node in nodes for out in node.output if out.endswith("_grad")}
    copies = []
    for index in sorted(layers):
        members = layers[index]
        anchor = _output_gradient(members, forward_readers, gradients)
        if anchor is not None:
            copies.append(_copy_layer(members, anchor, constants, backward_readers, forward_readers, index))
    for layer in reversed(copies):  # last layer first, as the backward pass meets them
        nodes.extend(layer)
    del graph.node[:]
    graph.node.extend(topological(nodes))  # gradient nodes now read copies listed after them
    return len(copies)


def _output_gradient(members: list, forward_readers: dict, gradients: set) -> str | None:
    """The gradient of the layer's output: a tensor it makes that only later forward nodes read.

    Its gradient is complete only once the backward pass is done with everything after
    the layer and has not started on the layer itself.
    """
    ids = {id(n) for n in members}
    for node in reversed(members):
        for out in node.output:
            readers = forward_readers.get(out, [])
            if out + "_grad" in gradients and readers and not any(id(r) in ids for r in readers):
                return out + "_grad"
    return None


def _copy_layer(
    members: list, anchor: str, constants: set, backward_readers: dict, forward_readers: dict, index: int
) -> list[onnx.NodeProto]:
    """The layer's copy, gates first; the layer's gradient nodes are rewired to read from it."""
    ids = {id(n) for n in members}
    produced = {out for n in members for out in n.output}
    kept = {
        out
        for out in produced  # read after the layer too: kept anyway, never rewired
        if any(id(r) not in ids for r in forward_readers.get(out, []))
    }
    p = f"/checkpoint/layers.{index}"
    gates: list[onnx.NodeProto] = []
    size = add_node(gates, "Size", [anchor], f"{p}/anchor_size")
    one = add_node(gates, "Div", [size, size], f"{p}/one")  # int64 1, once it exists
    renamed: dict[str, str] = {}
    copied: list[onnx.NodeProto] = []
    for node in members:
        inputs = [name for name in node.input if name and name not in constants]
        if node.op_type in NOT_COPIED or not inputs:
            continue  # see NOT_COPIED; or constants only (a dequantized weight, see recompute_weights)
        for name in inputs:
            if name not in produced and name not in renamed:  # enters the layer: gated
                shape = add_node(gates, "Shape", [name], f"{p}/gate/{name}/shape")
                shape = add_node(gates, "Mul", [shape, one], f"{p}/gate/{name}/late_shape")
                renamed[name] = add_node(gates, "Reshape", [name, shape], f"{p}/gate/{name}")
        if not any(name in renamed for name in inputs):
            continue  # reads only kept forward tensors (dropout outputs, shape arithmetic)
        copied.append(copy_node(node, SUFFIX, renamed))
    rewired = []
    for out in (produced - kept) & renamed.keys():
        # a gradient's Shape runs in the forward pass: it reads the original and keeps nothing
        readers = [r for r in backward_readers.get(out, []) if r.op_type != "Shape"]
        for reader in readers:
            reader.input[:] = [renamed[out] if name == out else name for name in reader.input]
        if readers:
            rewired.append(out)
    needed = ancestors([renamed[out] for out in rewired], {o: n for n in gates + copied for o in n.output})
    return [n for n in gates + copied if id(n) in needed]
