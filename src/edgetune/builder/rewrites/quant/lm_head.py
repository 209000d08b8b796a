"""QLoRA's LM head: int8 rows per vocabulary entry, stored and run in vocabulary chunks.

The head's rounding goes straight into every logit, so it stays int8 under int4 too
(bitsandbytes QLoRA leaves it in 16 bits). W (H, V) is quantized per vocabulary entry
and stored as at most HEAD_CHUNKS row chunks (R, H). The training graph runs it after
the loss block's labelled-row gather, dequantizing each chunk right before its own
Gemm, so one chunk's float weight exists at a time, and takes the loss per chunk
(`loss.chunked_cross_entropy`), so no (rows, V) tensor exists either. The inference
graph lets ORT fold each chunk's Cast at load and multiplies the chunk's logits by its
scales. A tied head's chunks are the embedding's int8 rows exactly and are stored as
slices of its table. Measurements: docs/design.md, "QLoRA".
"""

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.builder.graph import (
    add_initializer,
    add_node,
    copy_node,
    initializer_map,
    lm_head_chain,
    module_path,
    topological,
)
from edgetune.builder.rewrites.loss import chunked_cross_entropy
from edgetune.builder.rewrites.quant.formats import quantize_int8
from edgetune.builder.rewrites.quant.tensors import (
    CONTRIB,
    declare_float,
    drop_unused_initializers,
    is_float_matrix,
    quantized_tensor_names,
    use_contrib_opset,
)
from edgetune.builder.weights import PAGE, WeightFiles
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import LOGITS, LOSS

HEAD_CHUNKS = 8  # the LM head's float weight exists one vocabulary chunk at a time (SmolLM2: 14 of 113 MB)


def quantize_lm_head(model: onnx.ModelProto, training: bool, files: WeightFiles) -> dict[str, tuple[str, int]]:
    """Store the LM head (the MatMul writing `logits`) as int8 rows, in vocabulary chunks, in place.

    W (H, V) is quantized as the embeddings are, per vocabulary entry, and stored as at
    most HEAD_CHUNKS (R, H) row chunks. Training: each chunk is dequantized right before
    its own Gemm(x, rows, transB=1), and the loss is taken over the chunks' logits
    (`loss.chunked_cross_entropy`, which replaces the graph's SoftmaxCrossEntropyLoss). That
    needs the (rows, H) input of the loss block's labelled-row gather and its loss: call it
    after `add_causal_lm_loss`. Inference: ORT folds each chunk's int8 rows into float at load,
    and the scales multiply the chunks' logits. The float weight is read through `files`, and
    the chunks go to its store as they are made.

    A tied head's chunks are the embedding's int8 rows exactly. Returns, for those, chunk
    q name -> (table q name, byte offset), for `weights.share_base_weights` to store them
    as slices of the table. (They cannot be Slices in the graph: ORT folds a Slice of a
    constant into a copy, and a Slice gated on an activation is no constant chain for
    `recompute_weights`, so the backward would read the forward's float chunks.)
    """
    graph = model.graph
    inits = initializer_map(graph)
    head, tail = lm_head_chain(graph, LOGITS)  # a tail (logit scaling, soft-capping) applies per chunk
    if head is None or head.op_type != "MatMul" or not is_float_matrix(inits.get(head.input[1])):
        raise EdgetuneError(f"the graph's '{LOGITS}' do not come from an LM head MatMul over a float weight")
    if training and LOSS not in {o.name for o in graph.output}:
        raise EdgetuneError("a training graph's LM head is quantized after its loss is added")
    path = module_path(head.name)
    w = files.values(inits[head.input[1]])  # (H, V) float32
    table = _embedding_table(graph, inits, w.shape[::-1], files)  # (name, (V, H) int8)
    edges, chunks, tied = _chunk_edges(w.shape[1], w.shape[0]), [], table is not None
    for k, (start, end) in enumerate(edges):  # a chunk at a time: the build's temporaries stay small
        int8 = quantize_int8(w[:, start:end])  # q (H, R), scale (R,)
        rows = np.ascontiguousarray(int8["q"].T)  # (R, H) int8
        names = quantized_tensor_names(f"{path}/vocab{k}")
        files.add_array(graph, names["q"], rows)
        files.add_array(graph, names["scale"], int8["scale"])
        chunks.append(names)
        tied = tied and np.array_equal(table[1][start:end], rows)
    nodes: list[onnx.NodeProto] = []
    replaced = [head]
    if training:  # the loss too: computed per chunk
        logits = _chunked_head(graph, nodes, head, path, chunks, [(end - start, w.shape[0]) for start, end in edges])
        for k, chunk in enumerate(logits):
            renamed = {head.output[0]: chunk}
            nodes += [copy_node(node, f"/vocab{k}", renamed) for node in tail]
            logits[k] = renamed.get(tail[-1].output[0], chunk) if tail else chunk
        loss = next(n for n in graph.node if LOSS in n.output)
        nodes += chunked_cross_entropy(graph, logits, edges, loss.input[1])
        replaced += [loss, *tail]
    else:
        _served_head(graph, nodes, head, path, chunks, w.shape)
    at = list(graph.node).index(head)
    kept = [*graph.node[:at], *nodes, *(n for n in graph.node[at + 1 :] if all(n is not r for r in replaced))]
    if tail:  # its copies may read constants made after the head
        kept = topological(kept)
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)
    use_contrib_opset(model)
    if not tied:
        return {}
    return {names["q"]: (table[0], start * w.shape[0]) for names, (start, _) in zip(chunks, edges)}


def _chunk_edges(n_rows: int, row_bytes: int) -> list[tuple[int, int]]:
    """(start, end) rows of at most HEAD_CHUNKS chunks, each a whole number of pages where rows allow.

    Page-sized chunks of a page-aligned table start on pages too, so ORT maps them.
    """
    step = PAGE // np.gcd(row_bytes, PAGE)  # a multiple of `step` rows fills whole pages
    rows = -(-n_rows // HEAD_CHUNKS)
    rows = -(-rows // step) * step if step < rows else rows
    return [(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]


def _embedding_table(graph, inits: dict, shape: tuple[int, int], files: WeightFiles) -> tuple[str, np.ndarray] | None:
    """(name, values) of a Gather's int8 (V, H) table of `shape` (the quantized embedding), or None."""
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and table.data_type == TensorProto.INT8 and tuple(table.dims) == shape:
            return table.name, files.values(table)
    return None


def _chunked_head(
    graph, nodes: list, head: onnx.NodeProto, path: str, chunks: list[dict], shapes: list[tuple[int, int]]
) -> list[str]:
    """Each chunk's logits x · dequantized rows_kᵀ, one chunk's float rows at a time; returns their names."""
    x, logits = head.input[0], []  # x (N, H)
    for k, names in enumerate(chunks):
        p = f"/quant/{path}/vocab{k}"
        w = add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/weight", axis=0)  # (R, H)
        nodes[-1].domain = CONTRIB  # never folded
        declare_float(graph, w, shapes[k])
        logits.append(add_node(nodes, "Gemm", [x, w], f"{p}/logits", transB=1))  # (N, R)
    return logits


def _served_head(
    graph, nodes: list, head: onnx.NodeProto, path: str, chunks: list[dict], shape: tuple[int, int]
) -> None:
    """logits = Concat_k((x · float(q_k)ᵀ) · s_k): ORT folds only the Casts at load, into the float rows.

    The scales multiply each chunk's logits at run time, so folding makes no float
    temporaries beside the weight itself (a Cast/Mul/Concat/Transpose chain made four,
    raising eval peak RSS by 0.5 GB on SmolLM2).
    """
    n_hidden, n_vocab = shape
    p = f"/quant/{path}"
    add_initializer(graph, f"{p}/rows_by_hidden", np.array([-1, n_hidden], np.int64))
    add_initializer(graph, f"{p}/vocab_size", np.array([n_vocab], np.int64))
    x = head.input[0]  # (B, S, H)
    rows = add_node(nodes, "Reshape", [x, f"{p}/rows_by_hidden"], f"{p}/rows")  # (B·S, H)
    logits = []
    for k, names in enumerate(chunks):
        w = add_node(nodes, "Cast", [names["q"]], f"{p}/vocab{k}/float", to=TensorProto.FLOAT)  # (R, H)
        y = add_node(nodes, "Gemm", [rows, w], f"{p}/vocab{k}/unscaled", transB=1)  # (B·S, R)
        logits.append(add_node(nodes, "Mul", [y, names["scale"]], f"{p}/vocab{k}/logits"))
    flat = add_node(nodes, "Concat", logits, f"{p}/flat_logits", axis=-1)  # (B·S, V)
    lead = add_node(nodes, "Shape", [x], f"{p}/lead_shape", end=-1)  # [B, S]
    shape_out = add_node(nodes, "Concat", [lead, f"{p}/vocab_size"], f"{p}/logits_shape", axis=0)
    add_node(nodes, "Reshape", [flat, shape_out], head.output[0])  # (B, S, V)
