"""QLoRA's frozen base: the adapted Linear weights stored as int8 or int4, dequantized in-graph.

Weights are quantized in the graph's (in, out) MatMul layout:

- int8: symmetric, per output channel. s = max|W[:, j]| / 127, q = round(W / s) in
  [-127, 127]; the graph restores W ≈ q·s with one `DequantizeLinear(axis=1)`.
- int4: asymmetric, blockwise along the input dimension. Per block of `block_size` input
  rows and per output column: s = (max - min) / 15, q = round((W - min) / s) in [0, 15],
  W ≈ q·s + min. This is GGUF's Q4_1 form with a float offset (not an integer zero point),
  so weights loaded from a Q4_1 GGUF with block 32 (the embedded SmolLM2) come back exactly
  (SmolLM2, all-linear: logits within 7e-5 of the fp32 bundle; an integer zero point lost
  ~10% of each weight there and agreed on only 71% of top-1 tokens).
  Opset 18 has no 4-bit type and its DequantizeLinear only takes a 1-D scale, so q is
  stored as (bs, in/bs·out): column b·out + j holds block b of output j, and two values
  share a uint8 (rows [0, bs/2) in the low nibble, [bs/2, bs) in the high one). The graph
  unpacks with BitwiseAnd / BitShift / Concat, then DequantizeLinear(axis=1) + Add(min)
  and a Reshape / Transpose back to (in, out). ORT constant-folds the unpacking at load
  (1 byte per weight in memory) but never folds DequantizeLinear, so the float weights
  are rebuilt per step and not held as fp32 constants (SmolLM2, all-linear, batch 2x256:
  peak RSS 4.4 GB at 3.5 s/step; with Cast/Mul instead, folded to fp32: 5.5 GB, 2.9 s).

Only standard ops, and only on paths from constants: ORT needs no gradient for them, so
LoRA trains on top; fused kernels (MatMulNBits, MatMulInteger) have no gradient. The
training and inference graphs quantize the same weights to the same bytes, so the shared
weights file stores each quantized tensor once.
"""

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.build.graph import LinearSite, add_initializer, add_node, initializer_map
from edgetune.common.errors import EdgetuneError

QUANT_TYPES = ("int8", "int4")
BLOCK_SIZES = (32, 64, 128)
INT8_MAX = 127
INT4_MAX = 15


def check_quant_args(method: str, quant: str | None, block_size: int) -> None:
    """Refuse quantization settings that do not go together, before any work is done."""
    if quant is not None and method != "qlora":
        raise EdgetuneError(f"quant={quant} needs method=qlora (method is {method})")
    if method == "qlora" and quant is None:
        raise EdgetuneError(f"method=qlora needs a quant type ({', '.join(QUANT_TYPES)})")
    if quant is not None and quant not in QUANT_TYPES:
        raise EdgetuneError(f"unknown quant type '{quant}' (choose: {', '.join(QUANT_TYPES)})")
    if block_size not in BLOCK_SIZES:
        raise EdgetuneError(f"block size {block_size} is not supported (choose: {', '.join(map(str, BLOCK_SIZES))})")


def check_block_size(sites: list[LinearSite], block_size: int) -> None:
    """int4 blocks run along the input dimension: every adapted layer's must be a multiple."""
    for site in sites:
        if site.in_features % block_size:
            raise EdgetuneError(f"block size {block_size} does not divide the input dimension "
                                f"{site.in_features} of {site.module_path}")


def quantize_int8(w: np.ndarray) -> dict[str, np.ndarray]:
    """W (in, out) -> {q int8 (in, out), scale (out,)}: symmetric per output channel."""
    absmax = np.abs(w).max(axis=0)                                       # (out,)
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)  # (in, out)
    return {"q": q, "scale": scale}


def quantize_int4(w: np.ndarray, block_size: int) -> dict[str, np.ndarray]:
    """W (in, out) -> {q packed uint8 (bs/2, in/bs·out), scale (in/bs, out), offset (in/bs, out)}."""
    n_in, n_out = w.shape
    blocks = w.reshape(n_in // block_size, block_size, n_out)            # (in/bs, bs, out)
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)  # (in/bs, 1, out)
    scale = np.where(hi > lo, (hi - lo) / INT4_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint((blocks - lo) / scale), 0, INT4_MAX).astype(np.uint8)
    q = q.transpose(1, 0, 2).reshape(block_size, -1)                     # (bs, in/bs·out)
    packed = q[: block_size // 2] | (q[block_size // 2:] << 4)           # (bs/2, in/bs·out)
    return {"q": packed, "scale": scale[:, 0], "offset": lo[:, 0].astype(np.float32)}


def dequantize(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 (in, out) weight the graph computes from quantized tensors, in numpy."""
    q = tensors["q"]
    if q.dtype == np.int8:
        return q.astype(np.float32) * tensors["scale"]
    values = np.concatenate([q & 0x0F, q >> 4]).astype(np.float32)       # (bs, in/bs·out)
    values = values * tensors["scale"].reshape(-1) + tensors["offset"].reshape(-1)
    n_blocks, n_out = tensors["scale"].shape
    blocks = values.reshape(-1, n_blocks, n_out).transpose(1, 0, 2)      # (in/bs, bs, out)
    return blocks.reshape(-1, n_out)


def quantized_tensor_names(module_path: str) -> dict[str, str]:
    """Initializer names of one layer's quantized weight, shared by every graph of a bundle."""
    return {part: f"/quant/{module_path}/{part}" for part in ("q", "scale", "offset")}


def quantize_sites(model: onnx.ModelProto, sites: list[LinearSite], quant: str, block_size: int) -> None:
    """Store each site's weight quantized and feed its MatMul/Gemm the dequantized value, in place."""
    graph = model.graph
    inits = initializer_map(graph)
    by_name = {s.node_name: s for s in sites}
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        site = by_name.get(node.name)
        if site is not None:  # dequantize just before the MatMul: one layer's temporaries at a time
            w = numpy_helper.to_array(inits[site.weight])
            trans_b = [a for a in node.attribute if a.name == "transB" and a.i]
            if trans_b:  # Gemm with W (out, in): quantize W.T and feed it untransposed
                w, trans_b[0].i = w.T, 0
            w = np.ascontiguousarray(w, np.float32)                      # (in, out)
            tensors = quantize_int8(w) if quant == "int8" else quantize_int4(w, block_size)
            node.input[1] = _dequantize_nodes(graph, new_nodes, site.module_path, tensors, w.shape)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _dequantize_nodes(graph, nodes: list, path: str, tensors: dict, shape: tuple[int, int]) -> str:
    """Append the nodes that rebuild the float (in, out) weight; return its tensor name."""
    names = quantized_tensor_names(path)
    for part, array in tensors.items():
        add_initializer(graph, names[part], array)
    p = f"/quant/{path}"
    if "offset" not in tensors:  # int8
        return add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/weight", axis=1)
    n_blocks, n_out = tensors["scale"].shape
    add_initializer(graph, f"{p}/low_mask", np.array(0x0F, np.uint8))
    add_initializer(graph, f"{p}/shift", np.array(4, np.uint8))
    add_initializer(graph, f"{p}/flat", np.array([-1], np.int64))
    add_initializer(graph, f"{p}/blocked_shape", np.array([-1, n_blocks, n_out], np.int64))
    add_initializer(graph, f"{p}/weight_shape", np.array(shape, np.int64))
    low = add_node(nodes, "BitwiseAnd", [names["q"], f"{p}/low_mask"], f"{p}/low")          # (bs/2, in/bs·out)
    high = add_node(nodes, "BitShift", [names["q"], f"{p}/shift"], f"{p}/high", direction="RIGHT")
    q = add_node(nodes, "Concat", [low, high], f"{p}/unpacked", axis=0)                      # (bs, in/bs·out)
    scale = add_node(nodes, "Reshape", [names["scale"], f"{p}/flat"], f"{p}/flat_scale")     # (in/bs·out,)
    offset = add_node(nodes, "Reshape", [names["offset"], f"{p}/flat"], f"{p}/flat_offset")
    w = add_node(nodes, "DequantizeLinear", [q, scale], f"{p}/scaled", axis=1)               # q·s
    w = add_node(nodes, "Add", [w, offset], f"{p}/shifted")                                  # q·s + min
    w = add_node(nodes, "Reshape", [w, f"{p}/blocked_shape"], f"{p}/blocked")               # (bs, in/bs, out)
    w = add_node(nodes, "Transpose", [w], f"{p}/blocks", perm=[1, 0, 2])                    # (in/bs, bs, out)
    return add_node(nodes, "Reshape", [w, f"{p}/weight_shape"], f"{p}/weight")               # (in, out)
