"""Dequantize each frozen weight right where it is read, in forward and again in backward.

In a QLoRA training graph each frozen weight is rebuilt in float by `DequantizeLinear`
(`edgetune.builder.quantize`) and read twice: by the forward MatMul and by the backward
MatMul that computes dX = dY·Wᵀ. Left as is, the float weights take as much memory as
an fp32 base, for two reasons (docs/design.md, "QLoRA"):

- one tensor for both reads keeps every float weight alive from forward to backward;
- a node whose inputs are all constants may run anywhere before its reader, and ORT's
  order runs the forward dequantizations first of all, so every float weight is alive
  at the start of the step.

This rewrite gives the backward readers their own copy of the dequantization chain, and
makes each chain's DequantizeLinear depend on its reader's activation input (x forward,
dY backward) through a scale multiplied by 1 computed from that input's size. ORT then
cannot run it before the activation exists, nor merge the two copies (its common-
subexpression elimination compares input tensors), and each float weight lives only
around one MatMul.

It rewrites the training model's nodes only: initializers stay where they are (inline or
external data), so it works on a model of any size.
"""

import onnx
from onnx import TensorProto

from edgetune.builder.graph import add_node, ancestors, constant_tensors, copy_node, topological
from edgetune.common.names import LOSS

SUFFIX = "/recompute"


def recompute_dequantized_weights(model: onnx.ModelProto) -> int:
    """Rewrite a training model in place; return the number of backward copies made."""
    graph = model.graph
    chain = _Chain(graph)
    forward = ancestors([LOSS], chain.producers)
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) not in chain.weight_nodes:
            backward = id(node) not in forward
            for i, name in enumerate(node.input):
                if name in chain.dequantized:
                    node.input[i] = chain.read(name, node, backward, new_nodes)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(topological(new_nodes))
    return chain.backward_copies


class _Chain:
    """The graph's weight-rebuilding nodes (inputs all constant), and how to anchor and copy them."""

    def __init__(self, graph: onnx.GraphProto):
        self.producers = {o: n for n in graph.node for o in n.output}
        self.weight_nodes: set[int] = set()
        self.dequantized: set[str] = set()  # float tensors computed through a DequantizeLinear
        self.derived = constant_tensors(graph)  # computable from constants alone
        for node in graph.node:  # ONNX node lists are topologically sorted
            inputs = [name for name in node.input if name]
            if inputs and all(name in self.derived for name in inputs):
                self.weight_nodes.add(id(node))
                if node.op_type == "DequantizeLinear" or any(name in self.dequantized for name in inputs):
                    self.dequantized.update(node.output)
        self.scales: dict[int, str] = {}  # DequantizeLinear node anchored -> its own scale input
        self.ones: dict[str, str] = {}  # activation -> a float 1 computed from it
        self.copies: dict[tuple[str, str], str] = {}  # (float weight, activation) -> a backward copy
        self.backward_copies = 0

    def read(self, name: str, reader: onnx.NodeProto, backward: bool, new_nodes: list) -> str:
        """The tensor `reader` should read for weight `name`: the forward chain, or a backward copy.

        Each backward activation gets its own copy: with gradient checkpointing a weight has
        two backward readers, the layer's recomputed forward and the gradient dY·Wᵀ, and one
        copy anchored on dY would make the recomputation wait for its own result.
        """
        activation = next(x for x in reader.input if x and x not in self.derived)
        if not backward:
            self._anchor(name, activation, new_nodes)
            return name
        if (name, activation) not in self.copies:
            count = sum(1 for weight, _ in self.copies if weight == name)
            suffix = SUFFIX if count == 0 else f"{SUFFIX}{count + 1}"
            self.copies[name, activation] = self._copy(name, activation, suffix, new_nodes)
            self.backward_copies += 1
        return self.copies[name, activation]

    def _anchor(self, name: str, activation: str, new_nodes: list) -> None:
        """Make the DequantizeLinear upstream of `name` wait for `activation`."""
        node = self.producers[name]
        if node.op_type != "DequantizeLinear":
            for source in node.input:
                if source in self.dequantized:
                    self._anchor(source, activation, new_nodes)
            return
        if id(node) in self.scales:
            return
        self.scales[id(node)] = node.input[1]
        node.input[1] = add_node(
            new_nodes, "Mul", [node.input[1], self._one(activation, new_nodes)], f"{node.output[0]}/anchored_scale"
        )  # scale·1, same shape

    def _copy(self, name: str, activation: str, suffix: str, new_nodes: list) -> str:
        """A copy of the chain computing `name`, its DequantizeLinear anchored on `activation`."""
        node = self.producers[name]
        sources = {x: self._copy(x, activation, suffix, new_nodes) for x in node.input if x in self.dequantized}
        copy = copy_node(node, suffix, sources)
        if node.op_type == "DequantizeLinear":
            scale = self.scales.get(id(node), node.input[1])  # not the forward's anchored one
            copy.input[1] = add_node(
                new_nodes, "Mul", [scale, self._one(activation, new_nodes)], f"{node.output[0]}{suffix}/anchored_scale"
            )
        new_nodes.append(copy)
        return copy.output[list(node.output).index(name)]

    def _one(self, activation: str, new_nodes: list) -> str:
        """A float scalar 1 that ORT can only compute once `activation` exists."""
        if activation not in self.ones:
            size = add_node(new_nodes, "Size", [activation], f"{activation}/anchor_size")  # B·S·... elements
            size = add_node(new_nodes, "Cast", [size], f"{activation}/anchor_float", to=TensorProto.FLOAT)
            self.ones[activation] = add_node(new_nodes, "Div", [size, size], f"{activation}/anchor_one")
        return self.ones[activation]
