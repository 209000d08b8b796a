"""`--serve-quant`: the serving graph's frozen float weights as int4 or int8 kernels (the training graph stays fp32).

    int4   every decoder Linear in QLoRA's int4 form, done by `quant.base.quantize_frozen_base`
           before this runs: 4-bit blocks of 32 inputs with a scale and a float minimum
           (GGUF's Q4_1, so Q4_1 weights come back exactly) on MatMulNBits, int8 activations
           inside the kernel (accuracy_level 4: VNNI dot products); here only the LM head
    int8   every decoder Linear with int8 weights per output channel on MatMulIntegerToFloat
           (MLAS's u8·s8 GEMM: AMX or VNNI on x86, dot products on ARM)
    both   the LM head int8 the same way (its rounding goes straight into every logit;
           llama.cpp's GGUF keeps it 8-bit too) and the embedding table int8 per row
Activations are quantized per row (a token), symmetric, as uint8 around 128: a = max|x_row| / 127,
x_q = round(x / a) + 128; then y = a·Σ(x_q − 128)·q·s. Each row's numbers come from that row
alone and the integer sums are exact, so greedy output in a batch equals the same request
alone. ORT 1.19's DynamicQuantizeMatMul quantizes the whole activation tensor with one
scale, which broke that, and its MatMulNBits has no 8-bit kernel: int8 first ran there over
two 4-bit planes of the weights, whose kernel costs grow with every row (8 rows took 5× one
row's time, a 128-token prompt 2× fp32's). Each input tensor is quantized once for all its
readers (q/k/v, gate/up). Adapter bank MatMuls read graph inputs, never constants, so they
stay float. ORT's own MatMul4BitsQuantizer needs `quantize_matmul_4bits` from the inference
package's native module, which onnxruntime-training-cpu 1.19.2 lacks; quant.formats writes
the same layout in numpy. Measurements: docs/design.md, "Serving graph".
"""

import numpy as np
import onnx
from onnx import helper

from edgetune.builder.graph import (
    add_initializer,
    add_node,
    default_opset,
    initializer_map,
    lm_head_chain,
    module_path,
)
from edgetune.builder.rewrites.quant.base import quantize_embedding
from edgetune.builder.rewrites.quant.formats import quantize_int8
from edgetune.builder.rewrites.quant.tensors import (
    CONTRIB,
    drop_unused_initializers,
    is_float_matrix,
    use_contrib_opset,
)
from edgetune.builder.weights import WeightFiles
from edgetune.common.names import LOGITS

INT4_BLOCK = 32  # GGUF's Q4_1 block
ACCURACY_INT8 = 4  # MatMulNBits: quantize activations to int8 inside the kernel
LEVELS = 127  # symmetric: x_q − 128 in [−127, 127]
P = "/serve/int8"  # prefix of the constants and nodes added here


def quantize_serving_weights(model: onnx.ModelProto, quant: str, files: WeightFiles) -> None:
    """Quantize every Linear over a 2-D float constant (the LM head int8) and the embeddings, in place.

    Each float weight is read from `files` as it is quantized, so one is in memory at a time.

    int4: only the LM head is left (quant.base did the Linears, their block-sum helpers stay float).
    """
    if quant == "none":
        return
    graph = model.graph
    inits = initializer_map(graph)
    head, _ = lm_head_chain(graph, LOGITS)  # before any elementwise tail (Granite's scaling, Gemma 2's capping)
    head_output = head.output[0] if head is not None else LOGITS
    rows = RowQuantizer(graph, default_opset(model))
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Gather" and is_float_matrix(inits.get(node.input[0])):
            table = files.values(inits[node.input[0]])  # (V, H)
            before, after = quantize_embedding(graph, node, table, module_path(node.name))
            new_nodes += [*before, node, *after]
            continue
        if not _plain_linear(node, inits) or (quant == "int4" and node.output[0] != head_output):
            new_nodes.append(node)  # int4's block sums, or not a plain x·W (+ bias): left float
            continue
        w = files.values(inits[node.input[1]]).astype(np.float32)
        if any(a.name == "transB" and a.i for a in node.attribute):
            w = w.T
        _int8_product(graph, new_nodes, node, np.ascontiguousarray(w), rows)  # w (in, out)
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    use_contrib_opset(model)


def _plain_linear(node: onnx.NodeProto, inits: dict) -> bool:
    """`node` is x·W (+ bias) over a 2-D float constant W: a MatMul, or a Gemm neither transposing A nor scaling."""
    if node.op_type not in ("MatMul", "Gemm") or not is_float_matrix(inits.get(node.input[1])):
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


class RowQuantizer:
    """Per-row uint8 activations, each input tensor quantized once for all the Linears that read it."""

    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.opset = opset
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


def _int8_product(graph, nodes: list, node: onnx.NodeProto, w: np.ndarray, rows: RowQuantizer) -> None:
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
