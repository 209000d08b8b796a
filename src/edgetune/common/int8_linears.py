"""Linears written as int8 products with per-row activations, inside an ONNX graph.

Shared by the builder's int8 serving graph (`rewrites/serve/quantize.py`) and
`edgetune merge --quant int8` (`runtime/merge.py`), so both run the same numbers.

Weights are int8 per output channel (`common.int8`). Activations are quantized per row (a
token), symmetric, as uint8 around 128: a = max|x_row| / 127, x_q = round(x / a) + 128; then
y = a·Σ(x_q − 128)·q·s on MatMulIntegerToFloat (MLAS's u8·s8 GEMM: AMX or VNNI on x86, dot
products on ARM). Each row's numbers come from that row alone and the integer sums are
exact, so a row's output never depends on the rows batched with it. ORT's
`quantize_dynamic` (DynamicQuantizeMatMul) uses one scale per tensor instead, which costs
accuracy and ties a row to its neighbours (docs/design.md, "Serving graph").
"""

import numpy as np
import onnx
from onnx import helper

from edgetune.common.int8 import quantize_int8
from edgetune.common.onnx_graph import CONTRIB, add_initializer, add_node, default_opset, is_float_matrix, module_path

LEVELS = 127  # symmetric: x_q − 128 in [−127, 127]
P = "/serve/int8"  # prefix of the constants and nodes added here


def is_plain_linear(node: onnx.NodeProto, inits: dict) -> bool:
    """`node` is x·W (+ bias) over a 2-D float constant W: a MatMul, or a Gemm neither transposing A nor scaling."""
    if node.op_type not in ("MatMul", "Gemm") or not is_float_matrix(inits.get(node.input[1])):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def linear_weight(node: onnx.NodeProto, stored: np.ndarray) -> np.ndarray:
    """A plain Linear's weight as (in, out) float32, from its `stored` constant (transposed when transB)."""
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return np.ascontiguousarray(stored.T if trans_b else stored, dtype=np.float32)


class RowQuantizer:
    """Per-row uint8 activations, each input tensor quantized once for all the Linears that read it."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.opset = default_opset(model)
        self.done: dict[str, tuple[str, str]] = {}  # x -> (a (..., 1), x_q uint8 (..., K))
        present = {t.name for t in graph.initializer}
        for name, value in (
            ("one", np.array(1.0, np.float32)),
            ("tiny", np.array(1e-30, np.float32)),  # floor of max|x|: an all-zero row gets a finite scale
            ("levels", np.array(LEVELS, np.float32)),
            ("inv_levels", np.array(1.0 / LEVELS, np.float32)),
            ("zero_point", np.array(128, np.uint8)),
            ("last_axis", np.array([-1], np.int64)),
        ):
            if f"{P}/{name}" not in present:
                add_initializer(graph, f"{P}/{name}", value)

    def __call__(self, nodes: list, x: str) -> tuple[str, str]:
        """(a, x_q) with x ≈ (x_q − 128)·a per row; the nodes are appended to `nodes` the first time."""
        if x not in self.done:
            tag = f"{P}/rows/{x.strip('/')}"
            peak = add_node(nodes, "Abs", [x], f"{tag}/abs")
            if self.opset >= 18:
                peak = add_node(nodes, "ReduceMax", [peak, f"{P}/last_axis"], f"{tag}/max", keepdims=1)  # (..., 1)
            else:
                peak = add_node(nodes, "ReduceMax", [peak], f"{tag}/max", axes=[-1], keepdims=1)
            peak = add_node(nodes, "Max", [peak, f"{P}/tiny"], f"{tag}/max_floor")
            scale = add_node(nodes, "Mul", [peak, f"{P}/inv_levels"], f"{tag}/scale")  # a (..., 1)
            inverse = add_node(nodes, "Div", [f"{P}/levels", peak], f"{tag}/inverse_scale")  # 1/a (..., 1)
            y = add_node(nodes, "Mul", [x, inverse], f"{tag}/scaled")  # x/a in [−127, 127] (..., K)
            q = add_node(nodes, "QuantizeLinear", [y, f"{P}/one", f"{P}/zero_point"], f"{tag}/q")  # round + 128
            self.done[x] = (scale, q)
        return self.done[x]


def int8_linear(graph: onnx.GraphProto, nodes: list, node: onnx.NodeProto, w: np.ndarray, rows: RowQuantizer) -> None:
    """Append the int8 product replacing `node` (x·W, or a Gemm's x·W + bias) over `w` (in, out)."""
    p = f"{P}/{module_path(node.name) or node.name.strip('/')}"
    t = quantize_int8(w)  # q (in, out), scale (out,)
    q = add_initializer(graph, f"{p}/q", t["q"])
    s = add_initializer(graph, f"{p}/scale", t["scale"])
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    a, xq = rows(nodes, node.input[0])
    inputs = [xq, q, f"{P}/one", s, f"{P}/zero_point"]
    product = add_node(nodes, "MatMulIntegerToFloat", inputs, f"{p}/int8")  # Σ(x_q − 128)·q·s (..., N)
    nodes[-1].domain = CONTRIB
    if not bias:
        add_node(nodes, "Mul", [product, a], node.output[0])  # (..., N)
        return
    scaled = add_node(nodes, "Mul", [product, a], f"{p}/row_scaled")
    add_node(nodes, "Add", [scaled, bias], node.output[0])  # the bias after the row scale
