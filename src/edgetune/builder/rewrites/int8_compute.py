"""int8 compute: the products with frozen weights run as int8 GEMMs in training, forward and backward.

In LoRA and QLoRA almost every FLOP of a step passes through frozen weights, in the
forward x·W and in the input gradient dY·Wᵀ; neither needs a weight gradient. Both run
here on ONNX Runtime's integer GEMM (MLAS: AMX or VNNI on x86, dot-product on ARM), over
the int8 weight W = q·s, symmetric per output channel (`quant.formats.quantize_int8`):

- each activation row (a token) is quantized symmetrically, each step: a = max|x_row| / 127,
  x_q = round(x / a) + 128 as uint8 (MLAS's fast kernels are u8·s8, and a constant zero
  point of 128 is the scalar one MatMulInteger takes);
- `MatMulIntegerToFloat` computes Σ (x_q − 128)·q and multiplies by the weight's scales per
  output column; a Mul by a per row gives y ≈ x·W. A scale along the product's inner
  dimension (dY·Wᵀ runs over W's output channels) multiplies x first instead.

Forward values (x·W, in the forward pass and in a checkpointed layer's recomputation) take
two passes: the rounding residual r = x/a − (x_q − 128), |r| <= 1/2, is quantized again
with 1/254 and multiplied too, so the activations lose nothing a loss would notice: real
models have outlier channels, which set a row's scale and leave the other channels a few
levels (a 40× outlier costs one pass 2% of the output, two passes 1e-4:
`test_one_int8_product_matches_float64`). Gradients (dY·Wᵀ) take one pass, as SwitchBack's
do. docs/design.md, "int8 compute", has the ops chosen, what each CPU runs, and the
accuracy measured.

Both rewrites run on the training model once ORT has built its gradient graph, because
ORT has no gradient for MatMulInteger: the graph ORT differentiates computes
x·DequantizeLinear(q, s) in float, as QLoRA's does. This module holds the vocabulary and
the forward rewrite; `recompute.int8_gradients` the backward one. LoRA's own matmuls,
norms, softmax and the loss stay fp32.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgetune.builder.graph import add_initializer, add_node, topological
from edgetune.builder.rewrites.quant.base import quantize_frozen_base
from edgetune.builder.rewrites.quant.tensors import CONTRIB, drop_unused_initializers
from edgetune.builder.weights import WeightFiles

MANIFEST = {
    "type": "int8",
    "products": "every product with a frozen int8 weight, forward x·W and backward dY·Wᵀ",
    "activations": "uint8 per row, symmetric, each step; forward values in two passes (value and residual)",
}
LEVELS = 127  # symmetric: x_q − 128 in [−127, 127]
ZERO_POINT = 128
TINY = 1e-30  # floor of a row's max |x|: an all-zero row (no gradient reaches it) gets a finite scale
P = "/int8"  # prefix of every constant and node the rewrites add
GRADIENT = "_Grad/"  # in the names of the nodes ORT's gradient builder adds


def quantize_linears(model: onnx.ModelProto, training: bool, files: WeightFiles) -> None:
    """Store every float Linear but the LM head int8 per output channel, as QLoRA-int8 does (embeddings stay float)."""
    quantize_frozen_base(model, "int8", 0, training, files, embeddings=False)


def int8_forward(model: onnx.ModelProto) -> int:
    """Rewrite the forward products with an int8 weight (x·W, recomputed ones too) as two-pass int8 GEMMs."""
    return rewrite_products(model, gradients=False)


def rewrite_products(model: onnx.ModelProto, gradients: bool) -> int:
    """Rewrite the products with an int8 weight among ORT's gradient nodes, or among the others; count them.

    The weights' DequantizeLinear that nothing reads any more are dropped, the nodes sorted.
    """
    graph = model.graph
    weights = Int8Weights(graph, residual=not gradients)
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if (GRADIENT in node.name) == gradients and weights.reads(node):
            weights.product(new_nodes, node)
            count += 1
        else:
            new_nodes.append(node)
    read = {name for n in new_nodes for name in n.input} | {o.name for o in graph.output}
    new_nodes = [n for n in new_nodes if n.op_type != "DequantizeLinear" or n.output[0] in read]
    del graph.node[:]
    graph.node.extend(topological(new_nodes))
    drop_unused_initializers(graph)
    return count


class Int8Weights:
    """A training graph's int8 Linear weights, W = DequantizeLinear(q (in, out), s, axis=1), and int8 GEMMs over them.

    As `quant.base` stores Linears: a scale per output column. QLoRA's LM head chunks (rows
    per vocabulary entry, axis 0) are not among them and stay float products: the head's
    gradient reads dlogits = softmax − one-hot, a row with one large entry and thousands
    of small ones that a row's int8 scale would round to zero (docs/design.md, "int8 compute").
    residual: quantize the activations in two passes (value and rounding residual).
    """

    def __init__(self, graph: onnx.GraphProto, residual: bool):
        inits = {t.name: t for t in graph.initializer}
        self.graph = graph
        self.residual = residual
        self.dequantized: dict[str, tuple[str, str, tuple[int, int]]] = {}  # W -> (q, s, (in, out))
        for node in graph.node:
            q = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" and node.domain == CONTRIB else None
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if q is not None and q.data_type == TensorProto.INT8 and len(q.dims) == 2 and axis == 1:
                self.dequantized[node.output[0]] = (q.name, node.input[1], tuple(q.dims))
        self.rows: dict[str, list[str]] = {}  # activation -> [row scale a, x_q, (residual_q)], shared by its readers
        self.transposed = {
            n.input[0]: n.output[0] for n in graph.node if n.name.startswith(P) and n.op_type == "Transpose"
        }
        _constants(graph)

    def reads(self, node: onnx.NodeProto) -> bool:
        """`node` is x·W or x·Wᵀ (+ bias) over an int8 Linear weight W: nothing else transposed or scaled."""
        if node.op_type not in ("MatMul", "Gemm", "FusedMatMul") or len(node.input) < 2:
            return False
        if node.input[1] not in self.dequantized or node.input[0] in self.dequantized:
            return False
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = len(node.input) > 2 and node.input[2]
        untouched = ("transA", "transBatchA", "transBatchB")
        return (
            attrs.get("alpha", 1.0) == 1.0
            and (not bias or attrs.get("beta", 1.0) == 1.0)
            and not any(attrs.get(k) for k in untouched)
        )

    def product(self, nodes: list, node: onnx.NodeProto) -> None:
        """Append the int8 GEMM computing `node`'s output (see `reads`)."""
        x, w, y = node.input[0], node.input[1], node.output[0]
        tag = f"{P}{node.name or y}"  # the product's nodes keep its name (a gradient's has "_Grad/")
        bias = node.input[2] if len(node.input) > 2 else ""  # a Gemm's C
        q, s, _ = self.dequantized[w]
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        if transposed:  # dY·Wᵀ = (dY·diag(s))·qᵀ: the scales lie along the inner dimension
            x = add_node(nodes, "Mul", [x, s], f"{tag}/scaled_input")
            s = f"{P}/one"
            if q not in self.transposed:  # one per weight, however many readers
                self.transposed[q] = add_node(nodes, "Transpose", [q], f"{P}{q}/transposed", perm=[1, 0])
            q = self.transposed[q]  # ORT folds it into an int8 constant when the session loads
        row_scale, *quantized = self.quantize_rows(nodes, x)
        parts = []
        for k, (xq, a_scale) in enumerate(zip(quantized, (f"{P}/one", f"{P}/inv_residual_levels"))):
            inputs = [xq, q, a_scale, s, f"{P}/zero_point"]
            parts.append(add_node(nodes, "MatMulIntegerToFloat", inputs, f"{tag}/int8_{k}"))  # Σ(x_q − 128)·q·s
            nodes[-1].domain = CONTRIB
        if len(parts) == 2:
            parts = [add_node(nodes, "Add", parts, f"{tag}/int8_sum")]
        if not bias:
            add_node(nodes, "Mul", [parts[0], row_scale], y)  # (..., N)
            return
        scaled = add_node(nodes, "Mul", [parts[0], row_scale], f"{tag}/row_scaled")  # (..., N)
        add_node(nodes, "Add", [scaled, bias], y)  # the bias after the row scale, not inside the product

    def quantize_rows(self, nodes: list, x: str) -> list[str]:
        """x (..., K) -> [a (..., 1), x_q uint8 (..., K), and with `residual` r_q]; once per tensor.

        x ≈ (x_q − 128)·a, or (x_q − 128 + (r_q − 128)/254)·a. Every op broadcasts or takes a
        scalar scale, so each runs as one vectorized pass (a per-axis QuantizeLinear or
        DequantizeLinear over the rows made the two-pass chain 2.2× slower: docs/design.md).
        """
        if x not in self.rows:
            tag = f"{P}{x}"
            peak = add_node(nodes, "Abs", [x], f"{tag}/abs")
            peak = add_node(nodes, "ReduceMax", [peak, f"{P}/flat"], f"{tag}/row_max", keepdims=1)  # (..., 1)
            peak = add_node(nodes, "Max", [peak, f"{P}/tiny"], f"{tag}/row_max_floor")
            scale = add_node(nodes, "Mul", [peak, f"{P}/inv_levels"], f"{tag}/row_scale")  # a (..., 1)
            inverse = add_node(nodes, "Div", [f"{P}/levels", peak], f"{tag}/row_inverse_scale")  # 1/a (..., 1)
            y = add_node(nodes, "Mul", [x, inverse], f"{tag}/scaled")  # x/a in [−127, 127] (..., K)
            q = add_node(nodes, "QuantizeLinear", [y, f"{P}/one", f"{P}/zero_point"], f"{tag}/q")  # round + 128
            self.rows[x] = [scale, q]
            if self.residual:  # r = x/a − round(x/a), |r| <= 1/2: quantized again with 1/254
                r = add_node(nodes, "Round", [y], f"{tag}/rounded")
                r = add_node(nodes, "Sub", [y, r], f"{tag}/residual")
                r = add_node(nodes, "QuantizeLinear", [r, f"{P}/inv_residual_levels", f"{P}/zero_point"], f"{tag}/r_q")
                self.rows[x].append(r)
        return self.rows[x]


def _constants(graph: onnx.GraphProto) -> None:
    """The scalars and shapes the rewrites read, each added once."""
    present = {t.name for t in graph.initializer}
    for name, value in (
        ("one", np.array(1.0, np.float32)),
        ("tiny", np.array(TINY, np.float32)),
        ("levels", np.array(LEVELS, np.float32)),
        ("inv_levels", np.array(1.0 / LEVELS, np.float32)),
        ("inv_residual_levels", np.array(0.5 / LEVELS, np.float32)),  # a residual's scale is a/254
        ("zero_point", np.array(ZERO_POINT, np.uint8)),
        ("flat", np.array([-1], np.int64)),  # a shape, or the last axis
    ):
        if f"{P}/{name}" not in present:
            add_initializer(graph, f"{P}/{name}", value)
