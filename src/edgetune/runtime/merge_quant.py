"""`edgetune merge --quant int8|int4`: a merged model's Linears on quantized weights.

    int8   every Linear over a float constant (the LM head too) as the int8 serving graph
           writes it: int8 weights per output channel, activations quantized per row as each
           product runs (`common/int8_linears.py`)
    int4   every Linear but the LM head in 4-bit blocks of 32 inputs with a scale and a
           float minimum (GGUF's Q4_1, `common/int4.py`: a bundle built from a Q4_1 GGUF
           gets its weights back exactly) on MatMulNBits, int8 activations inside the kernel
           (accuracy_level 4), as the int4 serving graph runs them; the LM head int8 as above

The adapter stays a float rank-r product beside the quantized weight (`merge.fold_adapter`'s
low_rank): rounding W + ΔW to 4 bits loses most of the adapter's delta (docs/design.md,
"Merging to int8 or int4").
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.common.int4 import ACCURACY_INT8, pack_nibbles, quantize_int4
from edgetune.common.int4 import Q4_1_BLOCK as INT4_BLOCK
from edgetune.common.int8_linears import RowQuantizer, int8_linear, is_plain_linear, linear_weight
from edgetune.common.onnx_graph import (
    CONTRIB,
    add_initializer,
    add_node,
    drop_unused_initializers,
    use_contrib_opset,
)

QUANTS = ("int8", "int4")


def quantize_merged(model: onnx.ModelProto, quant: str, keep_float: str, block: int = INT4_BLOCK) -> None:
    """Write the merged model's Linears over float constants with `quant` weights, in place.

    keep_float: the name prefix of the adapter's own products, which stay float; block: int4's
    block size (a QLoRA-int4 bundle's own, so its adapted layers get their 4-bit weights back exactly).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    linears = [n for n in graph.node if is_plain_linear(n, inits) and not n.name.startswith(keep_float)]
    head = linears[-1] if linears else None  # the LM head (a QLoRA base's is int8 already: its last adapted Linear)
    quantized = {id(n) for n in linears}
    rows, sums = RowQuantizer(model), {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) not in quantized:
            nodes.append(node)
            continue
        w = linear_weight(node, numpy_helper.to_array(inits[node.input[1]]))  # (in, out)
        if quant == "int4" and node is not head:
            int4_linear(graph, nodes, node, w, block, sums)
        else:
            int8_linear(graph, nodes, node, w, rows)
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    use_contrib_opset(model)


def int4_linear(graph, nodes: list, node: onnx.NodeProto, w: np.ndarray, block: int, sums: dict) -> None:
    """Append x·W (+ a Gemm's bias) over `w` (in, out) in Q4_1 blocks of `block` inputs, replacing `node`.

    MatMulNBits without zero points computes x·((q − 8)·s). The rest of x·W, W = q·s + min,
    is constant along each block's inputs: Σ_b (Σ_{i∈b} x_i)·(8·s_b + min_b), a small MatMul
    over x's block sums, computed once per input tensor (`sums`: x -> its block sums).
    """
    (n_in, n_out), p, x = w.shape, f"/merge/int4/{node.name.strip('/') or node.output[0]}", node.input[0]
    t = quantize_int4(w, block)  # q (out·nb, bs), scale (out·nb,), offset (out·nb, 1)
    n_blocks = t["scale"].size // n_out
    add_initializer(graph, f"{p}/blocks", pack_nibbles(t["q"]).reshape(n_out, n_blocks, block // 2))
    add_initializer(graph, f"{p}/scale", t["scale"])
    rest = (8 * t["scale"] + t["offset"][:, 0]).reshape(n_out, n_blocks).T  # (nb, out)
    add_initializer(graph, f"{p}/block_rest", np.ascontiguousarray(rest, dtype=np.float32))
    attrs = {"K": n_in, "N": n_out, "bits": 4, "block_size": block, "accuracy_level": ACCURACY_INT8}
    nodes.append(
        helper.make_node(
            "MatMulNBits", [x, f"{p}/blocks", f"{p}/scale"], [f"{p}/centered"], name=p, domain=CONTRIB, **attrs
        )
    )  # x·((q − 8)·s) (..., out)
    if x not in sums:
        sums[x] = _block_sums(graph, nodes, x, n_in, block)
    share = add_node(nodes, "MatMul", [sums[x], f"{p}/block_rest"], f"{p}/rest")  # (..., nb)·(nb, out)
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    if bias:
        share = add_node(nodes, "Add", [share, bias], f"{p}/rest_and_bias")
    add_node(nodes, "Add", [f"{p}/centered", share], node.output[0])


def _block_sums(graph: onnx.GraphProto, nodes: list, x: str, n_in: int, block: int) -> str:
    """x (..., in) -> (..., nb), the sums of each block of inputs: one MatMul by an (in, nb) 0/1 matrix.

    (A Reshape + ReduceSum would need x's rank, which a merged graph does not record.)
    """
    p = f"/merge/int4/block_sums/{x.strip('/')}"
    n_blocks = -(-n_in // block)
    ones = np.kron(np.eye(n_blocks, dtype=np.float32), np.ones((block, 1), np.float32))  # (nb·bs, nb)
    add_initializer(graph, f"{p}/ones", np.ascontiguousarray(ones[:n_in]))  # (in, nb): a padded last block cut
    return add_node(nodes, "MatMul", [x, f"{p}/ones"], p)
