"""The residual Add and the RMSNorm after it as one `SkipSimplifiedLayerNormalization` (ORT's fused CPU op).

The export writes each decoder layer's residual sum and the norm that reads it as ten nodes:

    s  = Add(r, y)                       the residual stream plus a sublayer's output
    s' = Cast(s, float)                  (no-op casts of the norm's float32 upcast; optional)
    n  = s' · 1/Sqrt(ReduceMean(Pow(s', 2)) + ε)
    out = w · Cast(n)                    w: the norm's weight, an initializer (H,)

SkipSimplifiedLayerNormalization(r, y, w; ε) computes out and s (its fourth output, which
the next residual Add reads), in one kernel. ORT 1.19 fuses the norm alone at load, but not
the Add into it on these graphs, so this does it when the serving graph is built. Norms of
another form (Gemma's 1 + w, LayerNorm with a mean) are left as they are.
"""

import onnx
from onnx import helper, numpy_helper

from edgetune.builder.rewrites.quant.tensors import CONTRIB, use_contrib_opset

CHAIN = ("ReduceMean", "Add", "Sqrt", "Div", "Mul")  # after Pow(s', 2)


def fuse_skip_norms(model: onnx.ModelProto) -> int:
    """Replace every residual Add + RMSNorm of the form above by SkipSimplifiedLayerNormalization; return how many."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = {t.name for t in graph.initializer if len(t.dims) == 1}
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    for t in graph.initializer:  # small inline constants (ε, 2, 1) may be initializers too
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.dims) <= 1 and (not t.dims or t.dims[0] == 1):
            constants[t.name] = numpy_helper.to_array(t)
    replaced: dict[int, onnx.NodeProto | None] = {}  # id(node) -> its fused node (first), or None (removed)
    for node in graph.node:
        if node.op_type != "Pow" or id(node) in replaced:
            continue
        match = _match(node, producers, readers, weights, constants)
        if match is None:
            continue
        add, nodes, out, weight, epsilon = match
        fused = helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [add.input[0], add.input[1], weight],
            [out, "", "", node.input[0]],  # the sum keeps the name the rest of the graph reads
            name=f"/serve/skip_norm{add.name}",
            domain=CONTRIB,
            epsilon=epsilon,
        )
        replaced |= {id(n): None for n in nodes}
        replaced[id(add)] = fused
    kept = [replaced.get(id(n), n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(n for n in kept if n is not None)
    if replaced:
        use_contrib_opset(model)
    return sum(n is not None for n in replaced.values())


def _match(power, producers: dict, readers: dict, weights: set, constants: dict):
    """(residual Add, the norm's other nodes, output name, weight name, ε) for the Pow of an RMSNorm, or None."""
    x = power.input[0]  # s', the norm's input
    exponent = constants.get(power.input[1])
    if exponent is None or exponent.size != 1 or float(exponent) != 2.0:
        return None
    nodes, node = [power], power
    for op in CHAIN:
        after = readers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != op:
            return None
        node = after[0]
        nodes.append(node)
    mean, plus_eps, _, div, scale = nodes[1:]
    epsilon = constants.get(plus_eps.input[1])
    one = constants.get(div.input[0])
    if epsilon is None or epsilon.size != 1 or one is None or float(one) != 1.0 or x not in scale.input:
        return None
    if not _over_last_axis(mean, constants):
        return None
    after = readers.get(scale.output[0], [])
    if len(after) == 1 and after[0].op_type == "Cast":
        nodes.append(after[0])
        after = readers.get(after[0].output[0], [])
    if len(after) != 1 or after[0].op_type != "Mul":
        return None
    last = after[0]
    weight = next((i for i in last.input if i in weights), None)
    source = producers.get(x)
    if source is not None and source.op_type == "Cast":  # the float32 upcast: its output stays as the sum's name
        nodes.append(source)
        if len(readers.get(source.input[0], [])) != 1:  # the sum before the cast is read elsewhere too
            return None
        source = producers.get(source.input[0])
    if weight is None or source is None or source.op_type != "Add" or _reads_constant(source, producers):
        return None
    return source, [*nodes, last], last.output[0], weight, float(epsilon)


def _over_last_axis(mean: onnx.NodeProto, constants: dict) -> bool:
    """ReduceMean over the last axis only, keeping it (axes as an attribute, or as an input from opset 18)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in mean.attribute}
    axes = attrs.get("axes") if len(mean.input) < 2 else constants.get(mean.input[1])
    return axes is not None and list(map(int, axes)) == [-1] and attrs.get("keepdims", 1) == 1


def _reads_constant(add: onnx.NodeProto, producers: dict) -> bool:
    """An Add of a constant (a bias) is not a residual sum."""
    return any(name not in producers or producers[name].op_type == "Constant" for name in add.input)
