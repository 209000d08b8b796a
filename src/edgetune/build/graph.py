"""Small vocabulary for editing exported ONNX graphs: find Linear layers, add nodes.

Each helper takes the graph and tensor names and returns the names it produced, in the
style of onnxblock, so a rewrite reads top to bottom.
"""

import heapq
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.build.registry import Architecture


@dataclass(frozen=True)
class LinearSite:
    """One Linear layer of the exported graph, tied back to its HF module path."""

    node_name: str
    module_path: str      # e.g. model.layers.0.self_attn.q_proj
    weight: str           # initializer name of W
    in_features: int
    out_features: int


def module_path(node_name: str) -> str:
    """`/model/layers.0/self_attn/q_proj/MatMul` -> `model.layers.0.self_attn.q_proj`."""
    return ".".join(node_name.strip("/").split("/")[:-1])


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Name -> initializer, with `Identity(initializer)` outputs resolved to their source."""
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:  # the exporter deduplicates equal tensors through Identity
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    return inits


def find_linears(graph: onnx.GraphProto, arch: Architecture) -> list[LinearSite]:
    """Every MatMul/Gemm whose weight is an initializer and whose module is a known Linear."""
    inits = initializer_map(graph)
    sites = []
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in inits:
            continue
        path = module_path(node.name)
        if path.rsplit(".", 1)[-1] not in arch.linear_names:
            continue
        dims = list(inits[node.input[1]].dims)
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        in_f, out_f = (dims[1], dims[0]) if trans_b else (dims[0], dims[1])
        sites.append(LinearSite(node.name, path, node.input[1], in_f, out_f))
    return sites


def add_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> str:
    """Add a constant tensor to the graph and return its name."""
    graph.initializer.append(numpy_helper.from_array(array, name))
    return name


def add_node(nodes: list, op: str, inputs: list[str], output: str, **attrs) -> str:
    """Append one node producing `output` and return that name."""
    nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
    return output


def copy_node(node: onnx.NodeProto, suffix: str, renamed: dict[str, str]) -> onnx.NodeProto:
    """A copy of `node` named `name + suffix`, reading `renamed[x]` for each input x it has.

    Its outputs get the suffix too, and are added to `renamed` for the copies after it.
    """
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = node.name + suffix
    copy.input[:] = [renamed.get(name, name) for name in node.input]
    for i, out in enumerate(node.output):
        if out:
            renamed[out] = copy.output[i] = out + suffix
    return copy


def ancestors(outputs: list[str], producers: dict[str, onnx.NodeProto]) -> set[int]:
    """ids of the nodes (among `producers`' values) that the tensors `outputs` depend on.

    For a training graph and the loss, that is the forward pass.
    """
    seen: set[int] = set()
    wanted = list(outputs)
    while wanted:
        node = producers.get(wanted.pop())
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            wanted.extend(node.input)
    return seen


def constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Initializers and every tensor computed from initializers alone (a topologically sorted graph)."""
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if inputs and all(name in constants for name in inputs):
            constants.update(node.output)
    return constants


def topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """`nodes` sorted so that every node follows its inputs' producers, otherwise in list order."""
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    waiting = [sum(1 for x in set(n.input) if x in produced_by) for n in nodes]  # distinct producer inputs
    readers: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in set(n.input):
            if x in produced_by:
                readers.setdefault(produced_by[x], []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in readers.get(i, []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = next(n for n in nodes if all(n is not m for m in order))
        raise ValueError(f"the graph has a cycle through node {stuck.name or stuck.output[0]}")
    return order


def make_input(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    """A graph input with symbolic (str) or fixed (int) dimensions."""
    return helper.make_tensor_value_info(name, elem_type, shape)



def materialize_identity_initializers(graph: onnx.GraphProto) -> int:
    """Replace every `Identity(initializer)` by a copy of the initializer under its output name.

    The TorchScript exporter deduplicates equal tensors (all-ones norms, tied weights)
    through Identity nodes; ORT's gradient builder then emits one gradient per consumer
    under the same name. Copies cost nothing on disk: the shared weights file stores
    equal tensors once.
    """
    inits = {t.name: t for t in graph.initializer}
    aliases = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]
    for node in aliases:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
    dropped = {id(n) for n in aliases}
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return len(aliases)


def expose_saved_outputs(graph: onnx.GraphProto) -> int:
    """Give LayerNormalization its optional Mean/InvStdDev outputs, which its gradient reads.

    The exporter emits only the first output; ORT's LayerNormalizationGrad then fails
    with `i < node_->OutputDefs().size()`.
    """
    count = 0
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.output[0]}/mean", f"{node.output[0]}/inv_std_dev"])
            count += 1
    return count


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
        if (isnan.op_type != "IsNaN" or isnan.input[0] != guarded or zero_value is None
                or numpy_helper.to_array(zero_value).any()):
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
