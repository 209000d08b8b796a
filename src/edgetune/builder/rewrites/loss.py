"""The causal-LM loss block: mean cross-entropy over tokens whose label is not -100.

Labels arrive already shifted (labels[t] is the target of position t). Prompt and padding
positions (label -100) need no logits, so the LM head runs only on the K labelled
positions: the hidden states are flattened (B, S, H) -> (B·S, H), the labelled rows are
gathered (K, H), and only those go through the LM head (K, V) and the loss. With a chat
template most positions are prompt, so this skips most of the LM head's compute and the
(B·S, V) logits, their softmax and their gradient. The loss equals the full-logits one:
the same mean over the same labelled positions.

A QLoRA LM head runs in vocabulary chunks, and takes the same loss over the chunks' logits
(`chunked_cross_entropy`), without ever forming the (K, V) logits.
"""

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.builder.graph import add_initializer, add_node, lm_head_chain, make_input
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import LABELS, LOGITS, LOSS

IGNORE_INDEX = -100


def add_causal_lm_loss(model: onnx.ModelProto, logits: str = LOGITS) -> str:
    """Append the loss to the graph, make `loss` its only output, and return its name.

    `logits` must be produced by the LM head MatMul(hidden (B, S, H), W (H, V)), possibly
    through an elementwise tail (`graph.lm_head_chain`: Granite's scaling, Gemma 2's
    soft-capping), which then runs on the labelled rows too; the MatMul's input is rerouted
    through the labelled-position gather.
    """
    graph = model.graph
    lm_head, tail = lm_head_chain(graph, logits)
    if lm_head is None or lm_head.op_type != "MatMul":
        found = "nothing" if lm_head is None else f"a {lm_head.op_type} node"
        raise EdgetuneError(f"the exported graph's '{logits}' come from {found}, not the LM head MatMul")
    graph.input.append(make_input(LABELS, TensorProto.INT64, ["batch_size", "sequence_length"]))
    add_initializer(graph, "/loss/rows", np.array([-1], np.int64))
    add_initializer(graph, "/loss/ignore_index", np.array(IGNORE_INDEX, np.int64))
    add_initializer(graph, "/loss/ignored_row", np.array([0], np.int64))
    add_initializer(graph, "/loss/ignored_label", np.array([IGNORE_INDEX], np.int64))
    nodes: list = []
    hidden = lm_head.input[0]  # (B, S, H)
    hidden_shape = add_node(nodes, "Shape", [hidden], "/loss/hidden_shape", start=-1)  # [H]
    rows_by_hidden = add_node(nodes, "Concat", ["/loss/rows", hidden_shape], "/loss/flat_shape", axis=0)
    flat_hidden = add_node(nodes, "Reshape", [hidden, rows_by_hidden], "/loss/flat_hidden")  # (B·S, H)
    flat_labels = add_node(nodes, "Reshape", [LABELS, "/loss/rows"], "/loss/flat_labels")  # (B·S,)
    ignored = add_node(nodes, "Equal", [flat_labels, "/loss/ignore_index"], "/loss/ignored")  # (B·S,) bool
    labelled = add_node(nodes, "Not", [ignored], "/loss/labelled")
    where = add_node(nodes, "NonZero", [labelled], "/loss/nonzero")  # (1, K)
    rows = add_node(nodes, "Reshape", [where, "/loss/rows"], "/loss/labelled_rows")  # (K,)
    labels = add_node(nodes, "Gather", [flat_labels, rows], "/loss/labelled_labels", axis=0)  # (K,)
    # One ignored row is always kept, so the LM head never sees zero rows (ORT 1.19's
    # backward then dies with SIGFPE): row 0 with label -100, which the loss skips.
    index = add_node(nodes, "Concat", ["/loss/ignored_row", rows], "/loss/index", axis=0)  # (1 + K,)
    kept_hidden = add_node(nodes, "Gather", [flat_hidden, index], "/loss/kept_hidden", axis=0)  # (1 + K, H)
    kept_labels = add_node(nodes, "Concat", ["/loss/ignored_label", labels], "/loss/kept_labels", axis=0)
    lm_head.input[0] = kept_hidden  # logits (1 + K, V)
    at = list(graph.node).index(lm_head)
    for offset, node in enumerate(nodes):  # the gather runs before the LM head
        graph.node.insert(at + offset, node)
    graph.node.append(
        onnx.helper.make_node(
            "SoftmaxCrossEntropyLoss",
            [logits, kept_labels],
            [LOSS],
            name=LOSS,
            reduction="mean",
            ignore_index=IGNORE_INDEX,
        )
    )
    reshaped = {lm_head.output[0], *(n.output[0] for n in tail)}
    for info in list(graph.value_info):  # the exporter's (B, S, V) shapes no longer hold
        if info.name in reshaped:
            graph.value_info.remove(info)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, []))
    return LOSS


def chunked_cross_entropy(
    graph: onnx.GraphProto, chunk_logits: list[str], edges: list[tuple[int, int]], labels: str
) -> list[onnx.NodeProto]:
    """Nodes computing `loss`, SoftmaxCrossEntropyLoss(Concat(chunk_logits), labels), one vocabulary chunk at a time.

    chunk_logits[k] (N, R_k) holds vocabulary entries edges[k] = (start, end); labels (N,)
    are vocabulary ids or IGNORE_INDEX. loss = mean over labelled rows of logsumexp(logits)
    - logits[label], with logsumexp taken per chunk and then over the chunks. The backward
    pass then keeps each chunk's logits and no (N, V) tensor: not their concatenation, its
    log-softmax, its gradient or the gradient's split per chunk (SmolLM2, the demo's batches:
    four 14 MB tensors at once).
    """
    p = "/loss/chunked"
    add_initializer(graph, f"{p}/vocab_axis", np.array([1], np.int64))
    add_initializer(graph, f"{p}/zero_index", np.array(0, np.int64))
    add_initializer(graph, f"{p}/zero", np.array(0.0, np.float32))
    add_initializer(graph, f"{p}/ignore_index", np.array(IGNORE_INDEX, np.int64))
    nodes: list = []
    column = add_node(nodes, "Unsqueeze", [labels, f"{p}/vocab_axis"], f"{p}/labels")  # (N, 1)
    sums, targets = [], []
    for k, (logits, (start, end)) in enumerate(zip(chunk_logits, edges)):
        c = f"{p}/vocab{k}"
        add_initializer(graph, f"{c}/start", np.array(start, np.int64))
        add_initializer(graph, f"{c}/rows", np.array(end - start, np.int64))
        sums.append(
            add_node(nodes, "ReduceLogSumExp", [logits, f"{p}/vocab_axis"], f"{c}/logsumexp", keepdims=1)
        )  # (N, 1)
        local = add_node(nodes, "Sub", [column, f"{c}/start"], f"{c}/local_label")  # (N, 1)
        from_start = add_node(nodes, "GreaterOrEqual", [local, f"{p}/zero_index"], f"{c}/from_start")
        before_end = add_node(nodes, "Less", [local, f"{c}/rows"], f"{c}/before_end")
        inside = add_node(nodes, "And", [from_start, before_end], f"{c}/inside")  # (N, 1) bool
        index = add_node(nodes, "Where", [inside, local, f"{p}/zero_index"], f"{c}/index")  # (N, 1)
        picked = add_node(nodes, "GatherElements", [logits, index], f"{c}/picked", axis=1)  # (N, 1)
        targets.append(add_node(nodes, "Where", [inside, picked, f"{p}/zero"], f"{c}/target"))  # (N, 1)
    chunk_sums = add_node(nodes, "Concat", sums, f"{p}/chunk_logsumexp", axis=1)  # (N, K)
    logsumexp = add_node(nodes, "ReduceLogSumExp", [chunk_sums, f"{p}/vocab_axis"], f"{p}/logsumexp", keepdims=0)
    chunk_targets = add_node(nodes, "Concat", targets, f"{p}/chunk_targets", axis=1)  # (N, K)
    target = add_node(
        nodes, "ReduceSum", [chunk_targets, f"{p}/vocab_axis"], f"{p}/target", keepdims=0
    )  # (N,): the one chunk holding the label
    nll = add_node(nodes, "Sub", [logsumexp, target], f"{p}/nll")  # (N,)
    ignored = add_node(nodes, "Equal", [labels, f"{p}/ignore_index"], f"{p}/ignored")  # (N,) bool
    labelled = add_node(nodes, "Not", [ignored], f"{p}/labelled_bool")
    labelled = add_node(nodes, "Cast", [labelled], f"{p}/labelled", to=TensorProto.FLOAT)  # (N,) 1 or 0
    labelled_nll = add_node(nodes, "Mul", [nll, labelled], f"{p}/labelled_nll")
    total = add_node(nodes, "ReduceSum", [labelled_nll], f"{p}/total", keepdims=0)
    count = add_node(nodes, "ReduceSum", [labelled], f"{p}/count", keepdims=0)
    add_node(nodes, "Div", [total, count], LOSS)  # mean, as SCE's
    return nodes
