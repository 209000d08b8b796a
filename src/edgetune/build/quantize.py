"""QLoRA's frozen base: every Linear, the LM head and the embeddings stored as int8 or int4.

As bitsandbytes/PEFT QLoRA does, every frozen Linear is quantized, whatever the LoRA
targets are; here the token embedding and the LM head too (see benchmarks/METHODS.md for
what each saves). Linear weights are quantized in the graph's (in, out) MatMul layout:

- int8: symmetric, per output channel. s = max|W[:, j]| / 127, q = round(W / s) in
  [-127, 127]; the graph restores W ≈ q·s with one `DequantizeLinear(axis=1)`.
- int4: asymmetric, blockwise along the input dimension. Per block of `block_size` input
  rows and per output column: s = (max - min) / 15, q = round((W - min) / s) in [0, 15],
  W ≈ q·s + min. This is GGUF's Q4_1 form with a float offset (not an integer zero point),
  so weights loaded from a Q4_1 GGUF with block 32 (the embedded SmolLM2) come back exactly
  (SmolLM2, all-linear: logits within 7e-5 of the fp32 bundle; an integer zero point lost
  ~10% of each weight there and agreed on only 71% of top-1 tokens).
  q is a UINT4 tensor (two values a byte) laid out (bs, in/bs·out): column b·out + j
  holds block b of output j, so ORT's `com.microsoft.DequantizeLinear(axis=1)` takes the
  1-D scale; an Add(min) and a Reshape / Transpose give back (in, out).
- Embeddings (V, H), both quant types: int8 symmetric per row. The graph gathers the int8
  rows of the batch's tokens and scales them, so no float copy of the table exists.
- The LM head is quantized as a Linear, in int8 for both quant types: its 4-bit form
  would need a float Transpose copy of the largest weight per use. A tied head (the exporter stores it as a
  transposed float copy of the embedding) cannot read the embedding's int8 table: ORT
  1.19 has no gradient for FusedMatMul(transB=1), and its QDQ propagation breaks
  `Transpose(DequantizeLinear(q, s, axis=0))` (it inserts a QuantizeLinear of the wrong type).

ORT never constant-folds DequantizeLinear, and nothing before it is foldable, so the
weights stay quantized in memory and are rebuilt in float per use; see
`edgetune.build.recompute` for keeping them from living until the backward pass.
Only standard ops and ORT's contrib DequantizeLinear, on paths from constants: ORT needs
no gradient for them, so LoRA trains on top; fused kernels (MatMulNBits, MatMulInteger)
have no gradient. The training and inference graphs quantize the same weights to the same
bytes, so the shared weights file stores each quantized tensor once.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.build.graph import add_initializer, add_node, initializer_map, module_path
from edgetune.common.errors import EdgetuneError

QUANT_TYPES = ("int8", "int4")
BLOCK_SIZES = (32, 64, 128)
INT8_MAX = 127
INT4_MAX = 15
CONTRIB = "com.microsoft"
LOGITS = "logits"       # the exported graph's output: the LM head's MatMul writes it
UINT4_IR_VERSION = 10  # the first IR version with 4-bit tensors; ORT 1.19 reads up to 10


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


def quantize_int8(w: np.ndarray) -> dict[str, np.ndarray]:
    """W (in, out) -> {q int8 (in, out), scale (out,)}: symmetric per output channel."""
    absmax = np.abs(w).max(axis=0)                                       # (out,)
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -INT8_MAX, INT8_MAX).astype(np.int8)  # (in, out)
    return {"q": q, "scale": scale}


def quantize_int4(w: np.ndarray, block_size: int) -> dict[str, np.ndarray]:
    """W (in, out) -> {q uint8 in [0, 15] (bs, in/bs·out), scale (in/bs, out), offset (in/bs, out)}."""
    n_in, n_out = w.shape
    blocks = w.reshape(n_in // block_size, block_size, n_out)            # (in/bs, bs, out)
    lo, hi = blocks.min(axis=1, keepdims=True), blocks.max(axis=1, keepdims=True)  # (in/bs, 1, out)
    scale = np.where(hi > lo, (hi - lo) / INT4_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint((blocks - lo) / scale), 0, INT4_MAX).astype(np.uint8)
    q = q.transpose(1, 0, 2).reshape(block_size, -1)                     # (bs, in/bs·out)
    return {"q": q, "scale": scale[:, 0], "offset": lo[:, 0].astype(np.float32)}


def dequantize(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 (in, out) weight the graph computes from a Linear's quantized tensors, in numpy."""
    q = tensors["q"]
    if "offset" not in tensors:  # int8
        return q.astype(np.float32) * tensors["scale"]
    values = q.astype(np.float32) * tensors["scale"].reshape(-1) + tensors["offset"].reshape(-1)  # (bs, in/bs·out)
    n_blocks, n_out = tensors["scale"].shape
    blocks = values.reshape(-1, n_blocks, n_out).transpose(1, 0, 2)      # (in/bs, bs, out)
    return blocks.reshape(-1, n_out)


def quantized_tensor_names(module: str) -> dict[str, str]:
    """Initializer names of one module's quantized weight, shared by every graph of a bundle."""
    return {part: f"/quant/{module}/{part}" for part in ("q", "scale", "offset")}


def read_quantized(inits: dict[str, np.ndarray], module: str) -> dict[str, np.ndarray]:
    """A module's quantized tensors from an initializer dict (4-bit q comes back one value a byte)."""
    out = {part: inits[name] for part, name in quantized_tensor_names(module).items() if name in inits}
    out["q"] = np.asarray(out["q"]).view(np.uint8) if out["q"].dtype.names or out["q"].dtype.fields else out["q"]
    return out


def quantize_frozen_base(model: onnx.ModelProto, quant: str, block_size: int) -> list[str]:
    """Quantize every Linear (MatMul/Gemm over a 2-D float constant) and embedding in place.

    Returns the module paths quantized. Fails, before changing anything, on a Linear whose
    input dimension the int4 block size does not divide.
    """
    graph = model.graph
    inits = initializer_map(graph)
    linears = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and _is_float_matrix(inits.get(n.input[1]))]
    gathers = [n for n in graph.node if n.op_type == "Gather" and _is_float_matrix(inits.get(n.input[0]))]
    if quant == "int4":
        for node in (n for n in linears if n.output[0] != LOGITS):
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            n_in = inits[node.input[1]].dims[1 if trans_b else 0]
            if n_in % block_size:
                raise EdgetuneError(f"block size {block_size} does not divide the input dimension "
                                    f"{n_in} of {module_path(node.name)}")
    rewired: dict[int, tuple[list, list]] = {}  # id(node) -> (nodes to put before it, nodes after it)
    for node in gathers:
        table = numpy_helper.to_array(inits[node.input[0]])             # (V, H)
        rewired[id(node)] = _quantize_embedding(graph, node, table, module_path(node.name))
    for node in linears:
        path = module_path(node.name)
        w = numpy_helper.to_array(inits[node.input[1]])
        trans_b = [a for a in node.attribute if a.name == "transB" and a.i]
        if trans_b:  # Gemm with W (out, in): quantize W.T and feed it untransposed
            w, trans_b[0].i = w.T, 0
        w = np.ascontiguousarray(w, np.float32)                          # (in, out)
        nodes: list[onnx.NodeProto] = []
        int8 = quant == "int8" or node.output[0] == LOGITS  # the LM head: no float Transpose copy
        tensors = quantize_int8(w) if int8 else quantize_int4(w, block_size)
        node.input[1] = _dequantize_nodes(graph, nodes, path, tensors, w.shape)
        rewired[id(node)] = (nodes, [])
    new_nodes = []
    for node in graph.node:  # each layer's dequantization just before its use
        before, after = rewired.get(id(node), ([], []))
        new_nodes += [*before, node, *after]
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused_initializers(graph)
    if quant == "int4":
        model.ir_version = max(model.ir_version, UINT4_IR_VERSION)
    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    return [module_path(n.name) for n in gathers + linears]


def _is_float_matrix(tensor: onnx.TensorProto | None) -> bool:
    return tensor is not None and tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2


def _quantize_embedding(graph, node: onnx.NodeProto, table: np.ndarray, path: str) -> tuple[list, list]:
    """Gather int8 rows and their scales instead of float rows; return the nodes to put before and after."""
    q = quantize_int8(np.ascontiguousarray(table.T))                    # per row of the (V, H) table
    names = quantized_tensor_names(path)
    add_initializer(graph, names["q"], np.ascontiguousarray(q["q"].T))  # (V, H) int8
    add_initializer(graph, names["scale"], q["scale"])                   # (V,)
    p = f"/quant/{path}"
    add_initializer(graph, f"{p}/last_axis", np.array([-1], np.int64))
    ids, out = node.input[1], node.output[0]
    before: list[onnx.NodeProto] = []
    scale = add_node(before, "Gather", [names["scale"], ids], f"{p}/row_scale")           # (B, S)
    scale = add_node(before, "Unsqueeze", [scale, f"{p}/last_axis"], f"{p}/row_scale_3d")  # (B, S, 1)
    node.input[0], node.output[0] = names["q"], f"{p}/rows"                                # (B, S, H) int8
    after: list[onnx.NodeProto] = []
    rows = add_node(after, "Cast", [f"{p}/rows"], f"{p}/float_rows", to=TensorProto.FLOAT)
    add_node(after, "Mul", [rows, scale], out)                                             # (B, S, H)
    return before, after


def _uint4_initializer(graph, name: str, q: np.ndarray) -> str:
    """A UINT4 initializer from values in [0, 15]: two consecutive values a byte, low nibble first."""
    flat = q.reshape(-1)
    flat = np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)])
    packed = flat[0::2] | (flat[1::2] << 4)
    graph.initializer.append(helper.make_tensor(name, TensorProto.UINT4, list(q.shape), packed.tobytes(), raw=True))
    return name


def _dequantize_nodes(graph, nodes: list, path: str, tensors: dict, shape: tuple[int, int]) -> str:
    """Append the nodes that rebuild the float (in, out) weight; return its tensor name."""
    names = quantized_tensor_names(path)
    p = f"/quant/{path}"
    if "offset" not in tensors:  # int8
        add_initializer(graph, names["q"], tensors["q"])
        add_initializer(graph, names["scale"], tensors["scale"])
        return add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/weight", axis=1)
    n_blocks, n_out = tensors["scale"].shape
    _uint4_initializer(graph, names["q"], tensors["q"])
    add_initializer(graph, names["scale"], tensors["scale"])
    add_initializer(graph, names["offset"], tensors["offset"])
    add_initializer(graph, f"{p}/flat", np.array([-1], np.int64))
    add_initializer(graph, f"{p}/blocked_shape", np.array([-1, n_blocks, n_out], np.int64))
    add_initializer(graph, f"{p}/weight_shape", np.array(shape, np.int64))
    scale = add_node(nodes, "Reshape", [names["scale"], f"{p}/flat"], f"{p}/flat_scale")     # (in/bs·out,)
    offset = add_node(nodes, "Reshape", [names["offset"], f"{p}/flat"], f"{p}/flat_offset")
    w = add_node(nodes, "DequantizeLinear", [names["q"], scale], f"{p}/scaled", axis=1)       # q·s (bs, in/bs·out)
    nodes[-1].domain = CONTRIB                                                                 # 4-bit input
    w = add_node(nodes, "Add", [w, offset], f"{p}/shifted")                                  # q·s + min
    w = add_node(nodes, "Reshape", [w, f"{p}/blocked_shape"], f"{p}/blocked")               # (bs, in/bs, out)
    w = add_node(nodes, "Transpose", [w], f"{p}/blocks", perm=[1, 0, 2])                    # (in/bs, bs, out)
    return add_node(nodes, "Reshape", [w, f"{p}/weight_shape"], f"{p}/weight")               # (in, out)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
