"""QLoRA's frozen base: every Linear and the token embedding stored int8 or int4, in place.

As bitsandbytes/PEFT QLoRA does, every frozen Linear is quantized, whatever the LoRA
targets are (see `formats` for the number formats); the embedding table too, int8 per
row, gathered per token and scaled, so no float copy of the table exists. The LM head is
`lm_head`'s job.

Training graphs rebuild each float weight per use with ORT's contrib
`com.microsoft.DequantizeLinear` in front of a standard MatMul: ORT never constant-folds
it, so the weights stay quantized in memory, and ORT needs no gradient on paths from
constants, so LoRA trains on top (`recompute.weights` keeps each float weight alive only
around its reader). Inference graphs instead run int4 Linears on `MatMulNBits` over the
same 4-bit bytes, and int8 Linears as a Cast/Mul that ORT folds into float weights at
load. Measurements behind each choice: docs/design.md, "QLoRA".
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgetune.builder.graph import add_initializer, add_node, initializer_map, lm_head_chain, module_path
from edgetune.builder.rewrites.quant.formats import padded_inputs, quantize_int4, quantize_int8
from edgetune.builder.rewrites.quant.tensors import (
    CONTRIB,
    UINT4_IR_VERSION,
    add_quantized,
    declare_float,
    drop_unused_initializers,
    is_float_matrix,
    quantized_tensor_names,
    use_contrib_opset,
)
from edgetune.builder.weights import WeightFiles
from edgetune.common.names import LOGITS
from edgetune.common.peft import PEFT_PREFIX


def quantize_frozen_base(
    model: onnx.ModelProto,
    quant: str,
    block_size: int,
    training: bool,
    files: WeightFiles,
    embeddings: bool = True,
    accuracy_level: int = 0,
) -> None:
    """Quantize every Linear (MatMul/Gemm over a 2-D float constant) and the embeddings, in place.

    One weight at a time: each float weight is read through `files` and its quantized
    tensors go to `files`' store before the next is read. The LM head is left to
    `quantize_lm_head`, which the training graph needs after its loss.
    embeddings=False leaves the embedding tables float (int8 compute over a LoRA base).
    accuracy_level is the inference MatMulNBits' (0: float activations, 4: int8 per block).

    Where the int4 block size does not divide a Linear's input dimension, its last block
    is padded (`formats.quantize_int4`) and the readers drop the padding.
    """
    graph = model.graph
    inits = initializer_map(graph)
    head, _ = lm_head_chain(graph, LOGITS)
    linears = [
        n
        for n in graph.node
        if n.op_type in ("MatMul", "Gemm")
        and n is not head
        and not n.input[1].startswith(PEFT_PREFIX)  # an encoder's task head: trained, so float
        and is_float_matrix(inits.get(n.input[1]))
    ]
    gathers = [n for n in graph.node if embeddings and n.op_type == "Gather" and is_float_matrix(inits.get(n.input[0]))]
    rewired: dict[int, tuple[list, list]] = {}  # id(node) -> (nodes to put before it, nodes after it)
    block_sums: dict[str, str] = {}  # input tensor -> its per-block sums, shared by the Linears reading it
    for node in gathers:
        table = files.values(inits[node.input[0]])  # (V, H)
        rewired[id(node)] = quantize_embedding(graph, node, table, module_path(node.name), files)
    for node in linears:
        path = module_path(node.name)
        w = files.values(inits[node.input[1]])
        trans_b = [a for a in node.attribute if a.name == "transB" and a.i]
        if trans_b:  # Gemm with W (out, in): quantize W.T and feed it untransposed
            w, trans_b[0].i = w.T, 0
        w = np.ascontiguousarray(w, np.float32)  # (in, out)
        nodes: list[onnx.NodeProto] = []
        after: list[onnx.NodeProto] = []
        if quant == "int8":
            tensors = add_quantized(graph, path, quantize_int8(w), files)
            node.input[1] = _int8_weight(nodes, path, tensors, training)
        else:
            tensors = add_quantized(graph, path, quantize_int4(w, block_size), files)
            if training or not _plain_product(node):
                node.input[1] = _int4_weight(graph, nodes, path, tensors, w.shape, block_size)
            else:
                product = _NBitsProduct(path, tensors, w.shape, block_size, accuracy_level)
                after = _use_matmul_nbits(graph, nodes, node, product, block_sums, files)
        if training:
            declare_float(graph, node.input[1], w.shape)
        rewired[id(node)] = (nodes, after)
    new_nodes = []
    for node in graph.node:  # each layer's dequantization just before its use
        before, after = rewired.get(id(node), ([], []))
        new_nodes += [*before, node, *after]
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    if quant == "int4":
        model.ir_version = max(model.ir_version, UINT4_IR_VERSION)
    use_contrib_opset(model)


def quantize_embedding(
    graph, node: onnx.NodeProto, table: np.ndarray, path: str, files: WeightFiles | None = None
) -> tuple[list, list]:
    """Gather int8 rows and their scales instead of float rows; return the nodes to put before and after."""
    q = quantize_int8(np.ascontiguousarray(table.T))  # per row of the (V, H) table
    names = quantized_tensor_names(path)
    add = files.add_array if files is not None else add_initializer  # to the build's store, or inline
    add(graph, names["q"], np.ascontiguousarray(q["q"].T))  # (V, H) int8
    add(graph, names["scale"], q["scale"])  # (V,)
    p = f"/quant/{path}"
    add_initializer(graph, f"{p}/last_axis", np.array([-1], np.int64))
    ids, out = node.input[1], node.output[0]
    before: list[onnx.NodeProto] = []
    scale = add_node(before, "Gather", [names["scale"], ids], f"{p}/row_scale")  # (B, S)
    scale = add_node(before, "Unsqueeze", [scale, f"{p}/last_axis"], f"{p}/row_scale_3d")  # (B, S, 1)
    node.input[0], node.output[0] = names["q"], f"{p}/rows"  # (B, S, H) int8
    after: list[onnx.NodeProto] = []
    rows = add_node(after, "Cast", [f"{p}/rows"], f"{p}/float_rows", to=TensorProto.FLOAT)
    add_node(after, "Mul", [rows, scale], out)  # (B, S, H)
    return before, after


def _int8_weight(nodes: list, path: str, names: dict, training: bool) -> str:
    """The float (in, out) weight: DequantizeLinear per use (training), or a Cast/Mul ORT folds at load."""
    p = f"/quant/{path}"
    if training:
        w = add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/weight", axis=1)
        nodes[-1].domain = CONTRIB  # see the module docstring
        return w
    w = add_node(nodes, "Cast", [names["q"]], f"{p}/float", to=TensorProto.FLOAT)
    return add_node(nodes, "Mul", [w, names["scale"]], f"{p}/weight")


def _int4_weight(graph, nodes: list, path: str, names: dict, shape: tuple[int, int], block_size: int) -> str:
    """The float (in, out) weight rebuilt per use from 4-bit blocks: W = q·s + min."""
    p = f"/quant/{path}"
    n_in, n_out = shape
    padded = padded_inputs(n_in, block_size)
    add_initializer(graph, f"{p}/transposed_shape", np.array([n_out, padded], np.int64))
    w = add_node(nodes, "DequantizeLinear", [names["q"], names["scale"]], f"{p}/scaled", axis=0)  # q·s (out·nb, bs)
    nodes[-1].domain = CONTRIB  # 4-bit input
    w = add_node(nodes, "Add", [w, names["offset"]], f"{p}/shifted")  # + min
    w = add_node(nodes, "Reshape", [w, f"{p}/transposed_shape"], f"{p}/weight_t")  # (out, nb·bs)
    if padded != n_in:  # drop the last block's padding
        for name, value in (("starts", 0), ("ends", n_in), ("axes", 1)):
            add_initializer(graph, f"{p}/tail_{name}", np.array([value], np.int64))
        w = add_node(nodes, "Slice", [w, f"{p}/tail_starts", f"{p}/tail_ends", f"{p}/tail_axes"], f"{p}/weight_t_real")
    return add_node(nodes, "Transpose", [w], f"{p}/weight", perm=[1, 0])  # (in, out)


def _plain_product(node: onnx.NodeProto) -> bool:
    """A MatMul, or a Gemm computing x·W (+ bias): no transposed x, no alpha or beta scaling."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return node.op_type == "MatMul" or (
        attrs.get("alpha", 1.0) == 1.0
        and attrs.get("beta", 1.0) == 1.0
        and not attrs.get("transA", 0)
        and not attrs.get("transB", 0)
    )


@dataclass(frozen=True)
class _NBitsProduct:
    """One Linear's 4-bit weight as MatMulNBits reads it."""

    path: str
    names: dict  # part -> initializer name (q, scale, offset)
    shape: tuple[int, int]  # (in, out)
    block_size: int
    accuracy_level: int


def _use_matmul_nbits(
    graph, nodes: list, node: onnx.NodeProto, w: _NBitsProduct, block_sums: dict[str, str], files: WeightFiles
) -> list[onnx.NodeProto]:
    """An inference MatMul (or a Gemm's x·W + bias) as MatMulNBits over the same 4-bit bytes, plus the offsets' share.

    MatMulNBits' fast kernels take only integer zero points; without one it computes
    x·((q - 8)·s). The rest of x·W, W = q·s + min, is blockwise constant along the input:
    Σ_b (Σ_{i∈b} x_i)·(8·s_b + min_b), a small MatMul over the block sums of x. The block
    sums are computed once per input tensor (`block_sums`), for every Linear reading it
    (q/k/v, gate/up), before the first of them.
    """
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    names, (n_in, n_out), block_size = w.names, w.shape, w.block_size
    n_blocks = padded_inputs(n_in, block_size) // block_size  # the last block may be padded
    q = next(t for t in graph.initializer if t.name == names["q"])
    blob = helper.make_tensor(
        f"{names['q']}/blocks", TensorProto.UINT8, [n_out, n_blocks, block_size // 2], files.raw(q), raw=True
    )
    files.add(graph, blob)
    p, x, y = f"/quant/{w.path}", node.input[0], node.output[0]
    rank = 2 if node.op_type == "Gemm" else 3  # Gemm (GPT-2's Conv1D) reads (B·S, in), MatMul (B, S, in)
    node.op_type, node.domain = "MatMulNBits", CONTRIB
    node.input[1:] = [blob.name, names["scale"]]
    del node.attribute[:]  # a Gemm's alpha, beta, transA, transB
    node.output[0] = f"{p}/centered_output"  # x·((q - 8)·s)
    attrs = {"K": n_in, "N": n_out, "bits": 4, "block_size": block_size}
    if w.accuracy_level:
        attrs["accuracy_level"] = w.accuracy_level
    node.attribute.extend([helper.make_attribute(k, v) for k, v in attrs.items()])
    add_initializer(graph, f"{p}/eight", np.array(8.0, np.float32))
    add_initializer(graph, f"{p}/blocks_by_out", np.array([n_out, n_blocks], np.int64))
    offset = add_node(nodes, "Mul", [names["scale"], f"{p}/eight"], f"{p}/eight_s")  # folded at load
    offset = add_node(nodes, "Reshape", [names["offset"], f"{p}/blocks_by_out"], f"{p}/min_blocks")
    offset = add_node(
        nodes,
        "Add",
        [add_node(nodes, "Reshape", [f"{p}/eight_s", f"{p}/blocks_by_out"], f"{p}/eight_s_blocks"), offset],
        f"{p}/block_offset",
    )
    offset = add_node(nodes, "Transpose", [offset], f"{p}/block_offset_t", perm=[1, 0])  # (nb, out)
    sums = block_sums.get(x)
    if sums is None:  # the first Linear reading x computes its block sums
        sums = block_sums[x] = _block_sums(graph, nodes, x, rank, p, n_in, block_size, files)
    after: list[onnx.NodeProto] = []
    share = add_node(after, "MatMul", [sums, offset], f"{p}/offset_share")  # (..., nb)·(nb, out)
    if bias:
        share = add_node(after, "Add", [share, bias], f"{p}/offset_share_and_bias")
    add_node(after, "Add", [node.output[0], share], y)
    return after


def _block_sums(graph, nodes: list, x: str, rank: int, p: str, n_in: int, block_size: int, files: WeightFiles) -> str:
    """The per-block sums of x (..., in) -> (..., nb): a ReduceSum over x as (..., nb, bs) when bs divides in.

    x has `rank` axes; the blocked shape is a constant, so a decode step runs no Shape and
    Concat for it.

    A padded last block sums through an (in, nb) 0/1 matrix instead (one MatMul; the
    ReduceSum measured 1.6 ms faster per SmolLM2 decode step).
    """
    n_blocks = padded_inputs(n_in, block_size) // block_size
    if n_in % block_size:
        name = f"/quant/block_sums/{n_in}x{block_size}"  # 1 where input i is in block b
        if name not in {t.name for t in graph.initializer}:
            ones = np.kron(np.eye(n_blocks, dtype=np.float32), np.ones((block_size, 1), np.float32))  # (nb·bs, nb)
            files.add_array(graph, name, np.ascontiguousarray(ones[:n_in]))
        return add_node(nodes, "MatMul", [x, name], f"{p}/block_sums")
    leading = [0] * (rank - 1)  # Reshape's 0: the input's own size on that axis
    add_initializer(graph, f"{p}/blocked_shape", np.array([*leading, n_blocks, block_size], np.int64))
    add_initializer(graph, f"{p}/last_axis", np.array([-1], np.int64))
    blocks = add_node(nodes, "Reshape", [x, f"{p}/blocked_shape"], f"{p}/x_blocks")  # (..., nb, bs)
    return add_node(nodes, "ReduceSum", [blocks, f"{p}/last_axis"], f"{p}/block_sums", keepdims=0)  # (..., nb)
