"""Per-row adapters: every LoRA branch reads a bank of adapters through the batch's `adapter_index`.

For each adapted Linear (weights W, input x (B, S, in)):

    A = Gather(bank_A, adapter_index)        (B, in, R)   bank_A: (slots, in, R), the adapters' Aᵀ
    B = Gather(bank_B, adapter_index)        (B, R, out)  bank_B: (slots, R, out), s·Bᵀ (scale folded in)
    y = x·W + (x·A)·B                        per row: its own adapter
DoRA adds a per-row output scale g = m / ‖W + s·B·A‖ (bank (slots, out), computed when the
runtime loads the adapter): y = x·W + (g - 1)·(x·W) + g·(x·A)·B, bias untouched.
Slot 0 is "no adapter" (zeros, g = 1). Ranks differ between adapters: the bank's rank R is
the largest, smaller ones are zero-padded (zero columns add nothing). Bank tensors are graph
inputs named by PEFT's keys; the runtime owns them (`runtime/adapter_bank.py`).
"""

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.builder.graph import LinearSite, add_initializer, add_node, make_input
from edgetune.common.names import ADAPTER_INDEX
from edgetune.common.peft import base_output, branch_prefix, lora_keys, magnitude_key


def add_adapter_bank(model: onnx.ModelProto, sites: list[LinearSite], dora: bool) -> list[str]:
    """Add a bank branch to every site's output; return the bank input names (A, B and DoRA's g per site)."""
    graph = model.graph
    graph.input.append(make_input(ADAPTER_INDEX, TensorProto.INT64, ["batch"]))
    producers = {o: n for n in graph.node for o in n.output}
    nodes_by_name = {n.name: n for n in graph.node}
    inits = {t.name for t in graph.initializer}
    after: dict[int, list] = {}  # id(node) -> branch nodes to put after it
    names = []
    for site in sites:
        node = nodes_by_name[site.node_name]
        y = _linear_output(node, graph, inits)
        last = producers[y]
        key_a, key_b = lora_keys(site.module_path)
        p = branch_prefix(site.module_path)
        graph.input.append(make_input(key_a, TensorProto.FLOAT, ["adapter_slots", site.in_features, "bank_rank"]))
        graph.input.append(make_input(key_b, TensorProto.FLOAT, ["adapter_slots", "bank_rank", site.out_features]))
        names += [key_a, key_b]
        x = node.input[0]
        flat = node.op_type == "Gemm"  # GPT-2: x is (B·S, in); the branch needs the rows
        if flat and producers.get(x) is not None and producers[x].op_type == "Reshape":
            x = producers[x].input[0]
        branch: list[onnx.NodeProto] = []
        a = add_node(branch, "Gather", [key_a, ADAPTER_INDEX], f"{p}/bank_A", axis=0)  # (B, in, R)
        b = add_node(branch, "Gather", [key_b, ADAPTER_INDEX], f"{p}/bank_B", axis=0)  # (B, R, out)
        xa = add_node(branch, "MatMul", [x, a], f"{p}/xA")  # (B, S, R)
        xab = add_node(branch, "MatMul", [xa, b], f"{p}/xAB")  # (B, S, out)
        base = base_output(site.module_path)
        last.output[list(last.output).index(y)] = base
        if last.name == y:  # int4's offset Add is named after its output, which the branch's Add now writes
            last.name = base
        out, rows = base, y
        if flat:  # the branch works on (B, S, out) rows; the Gemm's (B·S, out) output is reshaped to them and back
            out = add_node(branch, "Reshape", [base, add_node(branch, "Shape", [xab], f"{p}/row_shape")], f"{p}/rows")
            rows = f"{p}/output_rows"
        if dora:
            key_g = magnitude_key(site.module_path)
            graph.input.append(make_input(key_g, TensorProto.FLOAT, ["adapter_slots", site.out_features]))
            names.append(key_g)
            bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else None
            _dora_output(graph, branch, out, xab, rows, key_g, p, bias)
        else:
            add_node(branch, "Add", [out, xab], rows)
        if flat:
            add_initializer(graph, f"{p}/rows_by_out", np.array([-1, site.out_features], np.int64))
            add_node(branch, "Reshape", [rows, f"{p}/rows_by_out"], y)
        after[id(last)] = branch
    new_nodes = []
    for node in graph.node:
        new_nodes += [node, *after.get(id(node), [])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return names


def _linear_output(node: onnx.NodeProto, graph: onnx.GraphProto, inits: set) -> str:
    """The tensor a Linear's module writes: its node's output, or the Add after a quantized MatMulNBits."""
    y = node.output[0]
    if node.op_type != "MatMulNBits":
        return y
    readers = [n for n in graph.node if y in n.input]
    return readers[0].output[0] if len(readers) == 1 and readers[0].op_type == "Add" else y


def _dora_output(graph, nodes: list, base: str, xab: str, y: str, key_g: str, p: str, bias: str | None) -> None:
    """y = base + (g - 1)·(x·W) + g·xAB with g = bank_g[adapter_index] per row; a bias is not rescaled."""
    add_initializer(graph, f"{p}/one", np.array(1.0, np.float32))
    add_initializer(graph, f"{p}/row_axis", np.array([1], np.int64))
    g = add_node(nodes, "Gather", [key_g, ADAPTER_INDEX], f"{p}/bank_g", axis=0)  # (B, out)
    g = add_node(nodes, "Unsqueeze", [g, f"{p}/row_axis"], f"{p}/bank_g_rows")  # (B, 1, out)
    plain = base if bias is None else add_node(nodes, "Sub", [base, bias], f"{p}/dora_base")  # x·W
    minus_one = add_node(nodes, "Sub", [g, f"{p}/one"], f"{p}/dora_scale_minus_one")
    rescaled = add_node(nodes, "Mul", [minus_one, plain], f"{p}/dora_rescaled_base")  # (B, S, out)
    lora = add_node(nodes, "Mul", [g, xab], f"{p}/dora_lora")
    extra = add_node(nodes, "Add", [rescaled, lora], f"{p}/dora_output")
    add_node(nodes, "Add", [base, extra], y)
