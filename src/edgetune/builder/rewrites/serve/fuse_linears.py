"""One MatMulNBits for the Linears that read one input (q/k/v, gate/up): fewer, wider kernels per decode step.

A decoding step multiplies one row by each weight, so it is bound by the number of kernels
and their thread hand-offs as much as by bytes: SmolLM2's k and v projections are 576 x 192.
MatMulNBits computes each output column from its own blocks, scales and zero points, so the
Linears that read the same input, with the same K, bits, block size and accuracy level, can
run as one over their weights stacked along N, followed by a Split into the original outputs:
each column is computed exactly as before.

The exact Q4_1 form (`quant/base.py`) adds to each product its minimums' share, a MatMul of
the input's block sums by the Linear's (nb, out) offsets, then an Add; those are stacked the
same way (a Concat of the offsets, folded by ORT at load), so the group's output is one Add.
"""

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.builder.graph import add_initializer, default_opset, topological
from edgetune.builder.rewrites.quant.tensors import drop_unused_initializers

NBITS_ATTRS = ("K", "bits", "block_size", "accuracy_level")


def fuse_shared_input_linears(model: onnx.ModelProto) -> int:
    """Merge the MatMulNBits nodes that share their input and attributes, in place; return how many groups."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL}
    producers = {o: n for n in graph.node for o in n.output}
    groups: dict[tuple, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        if node.op_type == "MatMulNBits" and all(name in inits for name in node.input[1:] if name):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            key = (node.input[0], len(node.input), *(attrs.get(k, 0) for k in NBITS_ATTRS))
            groups[key].append(node)
    fused = [group for group in groups.values() if len(group) > 1]
    if not fused:
        return 0
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    gone: set[int] = set()
    added: list[onnx.NodeProto] = []
    for group in fused:
        shares = _offset_shares(group, readers, producers)
        added += _fuse(graph, group, inits, default_opset(model), shares)
        members = {id(n) for n in group}
        for name in {x for n in group for x in n.input[1:] if x}:  # read by the group alone: now stacked
            if all(id(r) in members for r in readers[name]):
                inits[name].ClearField("raw_data")  # free its bytes before the next group is stacked
        gone.update(id(n) for n in group + [n for add, matmul in shares for n in (add, matmul)])
    nodes = [n for n in graph.node if id(n) not in gone] + added
    del graph.node[:]
    graph.node.extend(topological(nodes))
    drop_unused_initializers(graph)
    return len(fused)


def _offset_shares(group: list, readers: dict, producers: dict) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """Per Linear, (Add of product and share, MatMul of block sums by offsets), if every Linear has them."""
    found = []
    for node in group:
        after = readers[node.output[0]]
        add = after[0] if len(after) == 1 and after[0].op_type == "Add" else None
        share = producers.get(add.input[1]) if add is not None and add.input[0] == node.output[0] else None
        if share is None or share.op_type != "MatMul" or len(readers[share.output[0]]) != 1:
            return []
        found.append((add, share))
    return found if len({share.input[0] for _, share in found}) == 1 else []  # one input's block sums


def _fuse(graph, group: list, inits: dict, split_opset: int, shares: list) -> list[onnx.NodeProto]:
    """MatMulNBits over the group's weights stacked along N (plus the offsets' share), then a Split."""
    widths = [_attr(n, "N") for n in group]
    first = group[0]
    p = f"/serve/fused/{first.name or first.output[0]}"
    stacked = [first.input[0]]
    for i, name in enumerate(first.input[1:], start=1):  # blocks, scales, [zero points], each out-major
        if not name:
            stacked.append("")
            continue
        arrays = [numpy_helper.to_array(inits[n.input[i]]) for n in group]
        stacked.append(add_initializer(graph, f"{p}/input{i}", np.concatenate(arrays, axis=0)))
    node = onnx.NodeProto()
    node.CopyFrom(first)
    node.name = p
    del node.input[:]
    node.input.extend(stacked)
    node.output[0] = f"{p}/output"
    for a in node.attribute:
        if a.name == "N":
            a.i = sum(widths)
    outputs = [n.output[0] for n in group]
    fused = [node]
    if shares:  # y = product + block_sums·[offsets_1 | offsets_2 | ...]
        offsets = helper.make_node(
            "Concat", [m.input[1] for _, m in shares], [f"{p}/offsets"], name=f"{p}/offsets", axis=1
        )
        share = helper.make_node("MatMul", [shares[0][1].input[0], f"{p}/offsets"], [f"{p}/share"], name=f"{p}/share")
        total = helper.make_node("Add", [node.output[0], f"{p}/share"], [f"{p}/sum"], name=f"{p}/sum")
        fused += [offsets, share, total]
        outputs = [add.output[0] for add, _ in shares]
    if split_opset >= 13:
        sizes = add_initializer(graph, f"{p}/widths", np.array(widths, np.int64))
        split = helper.make_node("Split", [fused[-1].output[0], sizes], outputs, name=f"{p}/split", axis=-1)
    else:
        split = helper.make_node("Split", [fused[-1].output[0]], outputs, name=f"{p}/split", axis=-1, split=widths)
    return [*fused, split]


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)
