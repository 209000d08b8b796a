"""QLoRA's frozen base: every Linear and the embeddings as int8 or int4, the LM head as int8.

As bitsandbytes/PEFT QLoRA does, every frozen Linear is quantized, whatever the LoRA
targets are; here the token embedding and the LM head too. Linear weights W are
(in, out) as the graph's MatMul reads them:

- int8: symmetric, per output channel. s = max|W[:, j]| / 127, q = round(W / s) in
  [-127, 127], W ≈ q·s.
- int4: asymmetric, in blocks of `block_size` inputs per output. s = (max - min) / 15,
  q = round((W - min) / s) in [0, 15], W ≈ q·s + min: GGUF's Q4_1 form with a float
  offset, so weights loaded from a Q4_1 GGUF with block 32 (the embedded SmolLM2) come
  back exactly (an integer zero point lost ~10% of each
  weight there and agreed on only 71% of top-1 tokens). q is a UINT4 tensor laid out as
  ORT's MatMulNBits reads it: (out·in/bs, bs), two values a byte, low nibble first.
- Embeddings (V, H), both quant types: int8 symmetric per row. Every graph gathers the
  int8 rows of the batch's tokens and scales them: no float copy of the table exists.
- The LM head (H, V), both quant types: int8 symmetric per output channel (per vocabulary
  entry). Its rounding goes straight into every logit, so its precision matters most:
  it stays int8 under int4 too (bitsandbytes QLoRA leaves it in 16 bits). It is stored
  as at most HEAD_CHUNKS row chunks (V/8, H) (`quantize_lm_head`). The training graph
  runs it after the loss block's labelled-row gather, on (rows, H), and dequantizes each
  chunk right before its own Gemm(x, rows, transB=1), so only one chunk's float weight
  (SmolLM2: 14 of 113 MB) exists at a time, in forward and backward, and the loss is
  taken per chunk, so no (rows, V) tensor exists either (SmolLM2 int4, a random batch of
  8 x 64 with 60 of 64 positions labelled: peak RSS 727 -> 479 MB; same loss and
  gradients; with the demo's short completions, 406 against 410 MB). Quantized whole,
  its float weight was rebuilt at the moment of peak memory, next to the logits, and
  peak RSS rose by 24 MB. In chunks it fell: SmolLM2, the demo's 150 steps of 8 x 64,
  int8 813 -> 738 MB, int4 796 -> 720 MB; CPU time per step unchanged (a probe at
  8 x 64: 1.5 s either way). A tied head's chunks are the embedding's int8 rows exactly: they are
  stored as slices of its table (`weights.share_base_weights`), so SmolLM2's int8 base
  is 136 MB on disk (249 MB with a float head, 164 MB with chunks of its own). Peak RSS
  is the same either way within a few MB: ORT maps the file, and the embedding's Gather
  touches only the batch's rows.

The training graph rebuilds each float weight per use with ORT's contrib
`com.microsoft.DequantizeLinear` in front of a standard MatMul: ORT never constant-folds
it, and nothing before it is foldable, so the weights stay quantized in memory. (With
the standard-domain op for int8, ORT optimizes the training graph differently and its
peak RSS on SmolLM2, batch 8 x 64, was 2006 MB against 1839 MB.) Fused kernels
have no gradient, but ORT needs none on paths from constants, so LoRA trains on top. See
`edgetune.build.recompute_weights` for keeping each float weight alive only around its reader.

The inference graph runs once per generated token; rebuilding every weight per run there
made decoding 3-5x slower than LoRA's on SmolLM2 (eval of 20 held-out examples: 42-67 s
against 13 s). Instead:
- int4 Linears run as ORT's `MatMulNBits` over the same 4-bit bytes: 14.3 s against
  LoRA's 12.6 s, eval peak RSS 0.66 GB against 0.98 GB. Its fast kernels take no float
  zero point (with one: 44 s), and an integer zero point would lose Q4_1's exactness, so
  it computes x·((q - 8)·s) and two small MatMuls add the offsets' share (see
  `_use_matmul_nbits`). GPT-2's Gemm layers (x·W + bias) run the same way.
- int8 Linears are a Cast/Mul that ORT folds into float weights at load: as fast as
  LoRA (7.7 s), but float weights in memory (eval peak RSS 1.8 GB with the folding's
  temporaries); MatMulNBits has no 8-bit kernel in ORT 1.19.
- The LM head, both quant types: ORT folds each chunk's Cast into float rows at load,
  and the per-vocabulary scales multiply the chunk's logits at run time, so the folding
  leaves no other float temporary (see `_served_head`). Eval of 100 held-out examples
  against a float head: as fast, peak RSS int8 1.60 GB against 1.58, int4 0.52 against 0.43.
All read the same bytes as the training graph, so the shared weights file stores each
quantized tensor once.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.build.graph import add_initializer, add_node, initializer_map, module_path
from edgetune.build.loss import chunked_cross_entropy
from edgetune.build.weights import PAGE
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import LOSS

QUANT_TYPES = ("int8", "int4")
BLOCK_SIZES = (32, 64, 128)
INT8_MAX = 127
INT4_MAX = 15
CONTRIB = "com.microsoft"
LOGITS = "logits"       # the exported graph's output: the LM head's MatMul writes it (see quantize_lm_head)
UINT4_IR_VERSION = 10  # the first IR version with 4-bit tensors; ORT 1.19 reads up to 10
HEAD_CHUNKS = 8        # the LM head's float weight exists one vocabulary chunk at a time (SmolLM2: 14 of 113 MB)


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
    """W (in, out) -> {q uint8 in [0, 15] (out·in/bs, bs), scale (out·in/bs,), offset (out·in/bs, 1)}."""
    blocks = np.ascontiguousarray(w.T).reshape(-1, block_size)           # (out·in/bs, bs)
    lo, hi = blocks.min(axis=1), blocks.max(axis=1)                      # (out·in/bs,)
    scale = np.where(hi > lo, (hi - lo) / INT4_MAX, 1.0).astype(np.float32)
    q = np.clip(np.rint((blocks - lo[:, None]) / scale[:, None]), 0, INT4_MAX).astype(np.uint8)
    return {"q": q, "scale": scale, "offset": lo[:, None].astype(np.float32)}


def dequantize(tensors: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The float32 (in, out) weight of `shape` the training graph computes from quantized tensors, in numpy."""
    q, scale = tensors["q"], tensors["scale"]
    if "offset" not in tensors:  # int8
        return q.astype(np.float32) * scale
    blocks = q.reshape(scale.size, -1).astype(np.float32) * scale[:, None] + tensors["offset"]  # (out·in/bs, bs)
    return blocks.reshape(shape[1], shape[0]).T                                  # (in, out)


def quantized_tensor_names(module: str) -> dict[str, str]:
    """Initializer names of one module's quantized weight, shared by every graph of a bundle."""
    return {part: f"/quant/{module}/{part}" for part in ("q", "scale", "offset")}


def read_quantized(inits: dict[str, np.ndarray], module: str) -> dict[str, np.ndarray]:
    """A module's quantized tensors from an initializer dict (4-bit q comes back one value a byte)."""
    out = {part: inits[name] for part, name in quantized_tensor_names(module).items() if name in inits}
    if out["q"].dtype.fields or out["q"].dtype.names:  # onnx's uint4 numpy type
        out["q"] = np.asarray(out["q"]).view(np.uint8)
    return out


def quantize_frozen_base(model: onnx.ModelProto, quant: str, block_size: int, training: bool) -> None:
    """Quantize every Linear (MatMul/Gemm over a 2-D float constant) and the embeddings, in place.

    The LM head is left to `quantize_lm_head`, which the training graph needs after its loss.

    Fails, before changing anything, on a Linear whose input dimension the int4 block size
    does not divide.
    """
    graph = model.graph
    inits = initializer_map(graph)
    linears = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.output[0] != LOGITS
               and _is_float_matrix(inits.get(n.input[1]))]
    gathers = [n for n in graph.node if n.op_type == "Gather" and _is_float_matrix(inits.get(n.input[0]))]
    if quant == "int4":
        for node in linears:
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
        after: list[onnx.NodeProto] = []
        if quant == "int8":
            tensors = _add_tensors(graph, path, quantize_int8(w))
            node.input[1] = _int8_weight(nodes, path, tensors, training)
        else:
            tensors = _add_tensors(graph, path, quantize_int4(w, block_size))
            if training or not _plain_product(node):
                node.input[1] = _int4_weight(graph, nodes, path, tensors, w.shape)
            else:
                after = _use_matmul_nbits(graph, nodes, node, path, tensors, w.shape, block_size)
        if training:
            _declare_float(graph, node.input[1], w.shape)
        rewired[id(node)] = (nodes, after)
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


def quantize_lm_head(model: onnx.ModelProto, training: bool) -> dict[str, tuple[str, int]]:
    """Store the LM head (the MatMul writing `logits`) as int8 rows, in vocabulary chunks, in place.

    W (H, V) is quantized as the embeddings are, per vocabulary entry, and stored as at
    most HEAD_CHUNKS (R, H) row chunks. Training: each chunk is dequantized right before
    its own Gemm(x, rows, transB=1), and the loss is taken over the chunks' logits
    (`loss.chunked_cross_entropy`, which replaces the graph's SoftmaxCrossEntropyLoss). That
    needs the (rows, H) input of the loss block's labelled-row gather and its loss: call it
    after `add_causal_lm_loss`. Inference: ORT folds each chunk's int8 rows into float at load,
    and the scales multiply the chunks' logits.

    A tied head's chunks are the embedding's int8 rows exactly. Returns, for those, chunk
    q name -> (table q name, byte offset), for `weights.share_base_weights` to store them
    as slices of the table. (They cannot be Slices in the graph: ORT folds a Slice of a
    constant into a copy, and a Slice gated on an activation is no constant chain for
    `recompute_weights`, so the backward would read the forward's float chunks.)
    """
    graph = model.graph
    inits = initializer_map(graph)
    head = next((n for n in graph.node if LOGITS in n.output), None)
    if head is None or head.op_type != "MatMul" or not _is_float_matrix(inits.get(head.input[1])):
        raise EdgetuneError(f"the graph's '{LOGITS}' do not come from an LM head MatMul over a float weight")
    if training and LOSS not in {o.name for o in graph.output}:
        raise EdgetuneError("a training graph's LM head is quantized after its loss is added")
    path = module_path(head.name)
    w = _values(inits[head.input[1]])                                                      # (H, V) float32
    table = _embedding_table(graph, inits, w.shape[::-1])                                  # (name, (V, H) int8)
    edges, chunks, tied = _chunk_edges(w.shape[1], w.shape[0]), [], table is not None
    for k, (start, end) in enumerate(edges):  # a chunk at a time: the build's temporaries stay small
        int8 = quantize_int8(w[:, start:end])                                              # q (H, R), scale (R,)
        rows = np.ascontiguousarray(int8["q"].T)                                           # (R, H) int8
        names = quantized_tensor_names(f"{path}/vocab{k}")
        add_initializer(graph, names["q"], rows)
        add_initializer(graph, names["scale"], int8["scale"])
        chunks.append(names)
        tied = tied and np.array_equal(table[1][start:end], rows)
    nodes: list[onnx.NodeProto] = []
    replaced = [head]
    if training:  # the loss too: computed per chunk
        logits = _chunked_head(graph, nodes, head, path, chunks, [(end - start, w.shape[0]) for start, end in edges])
        loss = next(n for n in graph.node if LOSS in n.output)
        nodes += chunked_cross_entropy(graph, logits, edges, loss.input[1])
        replaced.append(loss)
    else:
        _served_head(graph, nodes, head, path, chunks, w.shape)
    at = list(graph.node).index(head)
    kept = [*graph.node[:at], *nodes, *(n for n in graph.node[at + 1:] if all(n is not r for r in replaced))]
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(graph)
    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    if not tied:
        return {}
    return {names["q"]: (table[0], start * w.shape[0]) for names, (start, _) in zip(chunks, edges)}


def _chunk_edges(n_rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """(start, end) rows of at most HEAD_CHUNKS chunks, each a whole number of pages where rows allow.

    Page-sized chunks of a page-aligned table start on pages too, so ORT maps them.
    """
    step = PAGE // np.gcd(row_bytes, PAGE)                           # a multiple of `step` rows fills whole pages
    rows = -(-n_rows // HEAD_CHUNKS)
    rows = -(-rows // step) * step if step < rows else rows
    return [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]


def _embedding_table(graph, inits: dict, shape: tuple[int, int]) -> tuple[str, np.ndarray] | None:
    """(name, values) of a Gather's int8 (V, H) table of `shape` (the quantized embedding), or None."""
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and table.data_type == TensorProto.INT8 and tuple(table.dims) == shape:
            return table.name, _values(table)
    return None


def _values(tensor: onnx.TensorProto) -> np.ndarray:
    """An inline constant's values, read-only over its raw bytes when it has them (no 113 MB copy of a head)."""
    if not tensor.raw_data:
        return numpy_helper.to_array(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.frombuffer(tensor.raw_data, dtype).reshape(tuple(tensor.dims))


def _chunked_head(graph, nodes: list, head: onnx.NodeProto, path: str, chunks: list[dict],
                  shapes: list[tuple[int, int]]) -> list[str]:
    """Each chunk's logits x · dequantized rows_kᵀ, one chunk's float rows at a time; returns their names."""
    x, logits = head.input[0], []                                                            # x (N, H)
    for k, names in enumerate(chunks):
        p = f"/quant/{path}/vocab{k}"
        w = add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/weight", axis=0)  # (R, H)
        nodes[-1].domain = CONTRIB                                                           # never folded
        _declare_float(graph, w, shapes[k])
        logits.append(add_node(nodes, "Gemm", [x, w], f"{p}/logits", transB=1))             # (N, R)
    return logits


def _served_head(graph, nodes: list, head: onnx.NodeProto, path: str, chunks: list[dict],
                 shape: tuple[int, int]) -> None:
    """logits = Concat_k((x · float(q_k)ᵀ) · s_k): ORT folds only the Casts at load, into the float rows.

    The scales multiply each chunk's logits at run time, so folding makes no float
    temporaries beside the weight itself (a Cast/Mul/Concat/Transpose chain made four,
    raising eval peak RSS by 0.5 GB on SmolLM2).
    """
    n_hidden, n_vocab = shape
    p = f"/quant/{path}"
    add_initializer(graph, f"{p}/rows_by_hidden", np.array([-1, n_hidden], np.int64))
    add_initializer(graph, f"{p}/vocab_size", np.array([n_vocab], np.int64))
    x = head.input[0]                                                                     # (B, S, H)
    rows = add_node(nodes, "Reshape", [x, f"{p}/rows_by_hidden"], f"{p}/rows")           # (B·S, H)
    logits = []
    for k, names in enumerate(chunks):
        w = add_node(nodes, "Cast", [names["q"]], f"{p}/vocab{k}/float", to=TensorProto.FLOAT)  # (R, H)
        y = add_node(nodes, "Gemm", [rows, w], f"{p}/vocab{k}/unscaled", transB=1)             # (B·S, R)
        logits.append(add_node(nodes, "Mul", [y, names["scale"]], f"{p}/vocab{k}/logits"))
    flat = add_node(nodes, "Concat", logits, f"{p}/flat_logits", axis=-1)                  # (B·S, V)
    lead = add_node(nodes, "Shape", [x], f"{p}/lead_shape", end=-1)                         # [B, S]
    shape_out = add_node(nodes, "Concat", [lead, f"{p}/vocab_size"], f"{p}/logits_shape", axis=0)
    add_node(nodes, "Reshape", [flat, shape_out], head.output[0])                           # (B, S, V)


def _declare_float(graph: onnx.GraphProto, name: str, shape: tuple[int, ...]) -> None:
    """Record a dequantized weight's float shape: ORT cannot infer through the contrib DequantizeLinear."""
    graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [int(d) for d in shape]))


def _is_float_matrix(tensor: onnx.TensorProto | None) -> bool:
    """A 2-D float32 constant: a Linear's weight or an embedding table."""
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


def _add_tensors(graph, path: str, tensors: dict[str, np.ndarray]) -> dict[str, str]:
    """Add a Linear's quantized tensors as initializers (q of int4 as UINT4); return part -> name."""
    names = quantized_tensor_names(path)
    for part, array in tensors.items():
        if part == "q" and "offset" in tensors:  # two values a byte, low nibble first
            packed = array[:, 0::2] | (array[:, 1::2] << 4)
            graph.initializer.append(helper.make_tensor(names[part], TensorProto.UINT4, list(array.shape),
                                                        packed.tobytes(), raw=True))
        else:
            add_initializer(graph, names[part], array)
    return {part: names[part] for part in tensors}


def _int8_weight(nodes: list, path: str, names: dict, training: bool) -> str:
    """The float (in, out) weight: DequantizeLinear per use (training), or a Cast/Mul ORT folds at load."""
    p = f"/quant/{path}"
    if training:
        w = add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/weight", axis=1)
        nodes[-1].domain = CONTRIB  # see the module docstring
        return w
    w = add_node(nodes, "Cast", [names["q"]], f"{p}/float", to=TensorProto.FLOAT)
    return add_node(nodes, "Mul", [w, names["scale"]], f"{p}/weight")


def _int4_weight(graph, nodes: list, path: str, names: dict, shape: tuple[int, int]) -> str:
    """The float (in, out) weight rebuilt per use from 4-bit blocks: W = q·s + min."""
    p = f"/quant/{path}"
    add_initializer(graph, f"{p}/transposed_shape", np.array(shape[::-1], np.int64))
    w = add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/scaled", axis=0)  # q·s (out·in/bs, bs)
    nodes[-1].domain = CONTRIB                                                                   # 4-bit input
    w = add_node(nodes, "Add", [w, names["offset"]], f"{p}/shifted")                           # + min
    w = add_node(nodes, "Reshape", [w, f"{p}/transposed_shape"], f"{p}/weight_t")             # (out, in)
    return add_node(nodes, "Transpose", [w], f"{p}/weight", perm=[1, 0])                      # (in, out)


def _plain_product(node: onnx.NodeProto) -> bool:
    """A MatMul, or a Gemm computing x·W (+ bias): no transposed x, no alpha or beta scaling."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return node.op_type == "MatMul" or (attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
                                        and not attrs.get("transA", 0) and not attrs.get("transB", 0))


def _use_matmul_nbits(graph, nodes: list, node: onnx.NodeProto, path: str, names: dict,
                      shape: tuple[int, int], block_size: int) -> list[onnx.NodeProto]:
    """Turn an inference MatMul (or a Gemm's x·W + bias) into MatMulNBits over the same 4-bit bytes, plus the offsets' share.

    MatMulNBits' fast kernels take only integer zero points; without one it computes
    x·((q - 8)·s). The rest of x·W, W = q·s + min, is blockwise constant along the input:
    Σ_b (Σ_{i∈b} x_i)·(8·s_b + min_b), two small MatMuls over block sums of x.
    """
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    n_in, n_out = shape
    n_blocks = n_in // block_size
    q = next(t for t in graph.initializer if t.name == names["q"])
    blob = helper.make_tensor(f"{names['q']}/blocks", TensorProto.UINT8,
                              [n_out, n_blocks, block_size // 2], q.raw_data, raw=True)
    graph.initializer.append(blob)
    p, x, y = f"/quant/{path}", node.input[0], node.output[0]
    node.op_type, node.domain = "MatMulNBits", CONTRIB
    node.input[1:] = [blob.name, names["scale"]]
    del node.attribute[:]  # a Gemm's alpha, beta, transA, transB
    node.output[0] = f"{p}/centered_output"                                                  # x·((q - 8)·s)
    node.attribute.extend([helper.make_attribute(k, v) for k, v in
                           (("K", n_in), ("N", n_out), ("bits", 4), ("block_size", block_size))])
    summer = f"/quant/block_sums/{n_in}x{block_size}"   # (in, in/bs): 1 where input i is in block b
    if summer not in {t.name for t in graph.initializer}:
        add_initializer(graph, summer, np.kron(np.eye(n_blocks, dtype=np.float32), np.ones((block_size, 1), np.float32)))
    add_initializer(graph, f"{p}/eight", np.array(8.0, np.float32))
    add_initializer(graph, f"{p}/blocks_by_out", np.array([n_out, n_blocks], np.int64))
    offset = add_node(nodes, "Mul", [names["scale"], f"{p}/eight"], f"{p}/eight_s")          # folded at load
    offset = add_node(nodes, "Reshape", [names["offset"], f"{p}/blocks_by_out"], f"{p}/min_blocks")
    offset = add_node(nodes, "Add", [add_node(nodes, "Reshape", [f"{p}/eight_s", f"{p}/blocks_by_out"],
                                              f"{p}/eight_s_blocks"), offset], f"{p}/block_offset")
    offset = add_node(nodes, "Transpose", [offset], f"{p}/block_offset_t", perm=[1, 0])      # (in/bs, out)
    after: list[onnx.NodeProto] = []
    sums = add_node(after, "MatMul", [x, summer], f"{p}/block_sums")                         # (..., in/bs)
    share = add_node(after, "MatMul", [sums, offset], f"{p}/offset_share")                   # (..., out)
    if bias:
        share = add_node(after, "Add", [share, bias], f"{p}/offset_share_and_bias")
    add_node(after, "Add", [node.output[0], share], y)
    return after


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads, in place (extending a new list would copy every tensor)."""
    used = {name for n in graph.node for name in n.input}
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
