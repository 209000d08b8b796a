"""`--serve-quant`: the serving graph's frozen float weights as int4 or int8 kernels (the training graph stays fp32).

    int4   every decoder Linear in QLoRA's int4 form, done by `quant.base.quantize_frozen_base`
           before this runs: 4-bit blocks of 32 inputs with a scale and a float minimum
           (GGUF's Q4_1, so Q4_1 weights come back exactly) on MatMulNBits, int8 activations
           inside the kernel (accuracy_level 4: VNNI dot products); here only the LM head
    int8   every decoder Linear with int8 weights per output channel, run as MatMulNBits over
           two 4-bit planes of them (see `int8_planes`)
    both   the LM head int8 the same way (its rounding goes straight into every logit;
           llama.cpp's GGUF keeps it 8-bit too) and the embedding table int8 per row
Every kernel quantizes activations per row (MatMulNBits: per block of each row), so a row's
numbers never depend on the other rows of a batch. ORT 1.19's DynamicQuantizeMatMul
quantizes the whole activation tensor with one scale, which made greedy output in a batch
differ from the same request alone; and its MatMulNBits has no 8-bit kernel, hence the planes.
Adapter bank MatMuls read graph inputs, never constants, so they stay float. ORT's own
MatMul4BitsQuantizer needs `quantize_matmul_4bits` from the inference package's native
module, which onnxruntime-training-cpu 1.19.2 lacks; this module writes the same layout in
numpy. Measurements: docs/design.md, "Serving graph".
"""

import numpy as np
import onnx
from onnx import helper

from edgetune.builder.graph import add_initializer, initializer_map, lm_head_chain, module_path
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

BLOCK = 32  # values per quantization block along K, for int8 and int4 (GGUF's Q4_1 block)
ACCURACY_INT8 = 4  # MatMulNBits: quantize activations to int8 inside the kernel


def quantize_serving_weights(model: onnx.ModelProto, quant: str, files: WeightFiles) -> None:
    """Quantize every Linear over a 2-D float constant (the LM head int8) and the embeddings, in place.

    Each float weight is read from `files` as it is quantized, so one is in memory at a time.

    int4: only the LM head is left (quant.base did the Linears, their block-sum helpers stay float).
    """
    if quant == "none":
        return
    graph = model.graph
    inits = initializer_map(graph)
    rewired: dict[int, tuple[list, list]] = {}
    head, _ = lm_head_chain(graph, LOGITS)  # before any elementwise tail (Granite's scaling, Gemma 2's capping)
    head_output = head.output[0] if head is not None else LOGITS
    for node in list(graph.node):
        if node.op_type == "Gather" and is_float_matrix(inits.get(node.input[0])):
            table = files.values(inits[node.input[0]])  # (V, H)
            rewired[id(node)] = quantize_embedding(graph, node, table, module_path(node.name))
            continue
        if node.op_type not in ("MatMul", "Gemm") or not is_float_matrix(inits.get(node.input[1])):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA") or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue  # not a plain x·W (+ bias): left float
        if quant == "int4" and node.output[0] != head_output:
            continue  # int4's block sums: left float
        w = files.values(inits[node.input[1]]).astype(np.float32)
        if attrs.get("transB"):
            w = w.T
        w = np.ascontiguousarray(w)  # (in, out)
        if w.shape[0] % BLOCK:
            continue  # no whole blocks: left float
        _to_matmul_nbits(graph, node, int8_planes(w), 2 * w.shape[0], w.shape[1])
    new_nodes = []
    for node in graph.node:
        before, after = rewired.get(id(node), ([], []))
        new_nodes += [*before, node, *after]
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    use_contrib_opset(model)


def int8_planes(w: np.ndarray, block: int = BLOCK) -> dict[str, np.ndarray]:
    """W (in, out) int8 per output channel as MatMulNBits tensors over K = 2·in: [x, x]·[hi; lo] = x·W exactly.

    q = round(W / s) in [-127, 127]; u = q + 128 = 16·hi + lo with hi, lo in [0, 15]; then
    s·q = 16s·(hi - 8) + s·(lo - 0): the high plane's blocks get scale 16s and zero point 8,
    the low plane's scale s and zero point 0.
    """
    t = quantize_int8(w)  # q (in, out), scale (out,)
    u = (t["q"].astype(np.int16) + 128).astype(np.uint8)  # (in, out)
    planes = np.concatenate([u >> 4, u & 15]).T  # (out, 2·in)
    n_out, n_k = planes.shape
    q = np.ascontiguousarray(planes.reshape(n_out, n_k // block, block))  # (out, blocks, bs)
    half = n_k // block // 2
    scale = np.concatenate([np.repeat(16 * t["scale"][:, None], half, 1), np.repeat(t["scale"][:, None], half, 1)], 1)
    zero = np.concatenate([np.full((n_out, half), 8, np.uint8), np.zeros((n_out, half), np.uint8)], 1)
    if zero.shape[1] % 2:
        zero = np.concatenate([zero, np.zeros((n_out, 1), np.uint8)], axis=1)
    return {
        "q": q[..., 0::2] | (q[..., 1::2] << 4),
        "scale": scale.astype(np.float32).reshape(-1),
        "zero": np.ascontiguousarray(zero[:, 0::2] | (zero[:, 1::2] << 4)),
    }


def _to_matmul_nbits(graph, node: onnx.NodeProto, t: dict, k: int, n: int) -> None:
    """Turn a MatMul (or a Gemm's x·W + bias) into MatMulNBits over int8 planes `t` on [x, x], in place."""
    p = f"/serve/int8/{module_path(node.name) or node.name}"
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    x = f"{p}/x_twice"
    graph.node.append(helper.make_node("Concat", [node.input[0], node.input[0]], [x], name=x, axis=-1))
    q = add_initializer(graph, f"{p}/q", t["q"])
    s = add_initializer(graph, f"{p}/scale", t["scale"])
    z = add_initializer(graph, f"{p}/zero_point", t["zero"])
    node.op_type, node.domain = "MatMulNBits", CONTRIB
    del node.input[:]
    node.input.extend([x, q, s, z])
    del node.attribute[:]
    for key, v in (("K", k), ("N", n), ("bits", 4), ("block_size", BLOCK), ("accuracy_level", ACCURACY_INT8)):
        node.attribute.append(helper.make_attribute(key, v))
    if bias:
        y = node.output[0]
        node.output[0] = f"{p}/unbiased"
        graph.node.append(helper.make_node("Add", [node.output[0], bias], [y], name=f"{p}/bias"))
