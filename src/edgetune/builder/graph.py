"""Small vocabulary for editing exported ONNX graphs: find Linear layers, add nodes.

Each helper takes the graph and tensor names and returns the names it produced, in the
style of onnxblock, so a rewrite reads top to bottom.
"""

import heapq
from dataclasses import dataclass

import onnx
from onnx import helper

from edgetune.builder.registry import Architecture
from edgetune.common.onnx_graph import add_initializer, add_node, default_opset, module_path  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class LinearSite:
    """One Linear layer of the exported graph, tied back to its HF module path."""

    node_name: str
    module_path: str  # e.g. model.layers.0.self_attn.q_proj
    weight: str  # initializer name of W
    in_features: int
    out_features: int


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


LOGIT_TAIL_OPS = ("Div", "Mul", "Tanh")  # Granite's logits / scale, Gemma 2's soft-capping


def lm_head_chain(graph: onnx.GraphProto, logits: str) -> tuple[onnx.NodeProto | None, list[onnx.NodeProto]]:
    """The node the LM head's product comes from, and the elementwise tail from it to `logits`, in order.

    The tail is a chain of LOGIT_TAIL_OPS, each with one non-constant input: scalings and
    soft-capping that act on every logit alike, so they may run on any subset of rows or
    vocabulary entries. Without a tail, the node is the one producing `logits`.
    """
    producers = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    tail: list[onnx.NodeProto] = []
    node = producers.get(logits)
    while node is not None and node.op_type in LOGIT_TAIL_OPS:
        variable = [name for name in node.input if name not in constants]
        if len(variable) != 1:
            break
        tail.insert(0, node)
        node = producers.get(variable[0])
    return node, tail


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
