"""The causal-LM loss block: mean cross-entropy over tokens whose label is not -100.

Labels arrive already shifted (labels[t] is the target of position t). Prompt and padding
positions (label -100) need no logits, so the LM head runs only on the K labelled
positions: the hidden states are flattened (B, S, H) -> (B·S, H), the labelled rows are
gathered (K, H), and only those go through the LM head (K, V) and the loss. With a chat
template most positions are prompt, so this skips most of the LM head's compute and the
(B·S, V) logits, their softmax and their gradient. The loss equals the full-logits one:
the same mean over the same labelled positions.
"""

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.build.graph import add_initializer, add_node, make_input
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import LABELS, LOSS

IGNORE_INDEX = -100


def add_causal_lm_loss(model: onnx.ModelProto, logits: str = "logits") -> str:
    """Append the loss to the graph, make `loss` its only output, and return its name.

    `logits` must be produced by the LM head MatMul(hidden (B, S, H), W (H, V)); its
    input is rerouted through the labelled-position gather.
    """
    graph = model.graph
    lm_head = next((n for n in graph.node if logits in n.output), None)
    if lm_head is None or lm_head.op_type != "MatMul":
        found = "nothing" if lm_head is None else f"a {lm_head.op_type} node"
        raise EdgetuneError(f"the exported graph's '{logits}' come from {found}, not the LM head MatMul")
    graph.input.append(make_input(LABELS, TensorProto.INT64, ["batch_size", "sequence_length"]))
    add_initializer(graph, "/loss/rows", np.array([-1], np.int64))
    add_initializer(graph, "/loss/ignore_index", np.array(IGNORE_INDEX, np.int64))
    add_initializer(graph, "/loss/ignored_row", np.array([0], np.int64))
    add_initializer(graph, "/loss/ignored_label", np.array([IGNORE_INDEX], np.int64))
    nodes: list = []
    hidden = lm_head.input[0]                                                                  # (B, S, H)
    hidden_shape = add_node(nodes, "Shape", [hidden], "/loss/hidden_shape", start=-1)          # [H]
    rows_by_hidden = add_node(nodes, "Concat", ["/loss/rows", hidden_shape], "/loss/flat_shape", axis=0)
    flat_hidden = add_node(nodes, "Reshape", [hidden, rows_by_hidden], "/loss/flat_hidden")    # (B·S, H)
    flat_labels = add_node(nodes, "Reshape", [LABELS, "/loss/rows"], "/loss/flat_labels")      # (B·S,)
    ignored = add_node(nodes, "Equal", [flat_labels, "/loss/ignore_index"], "/loss/ignored")  # (B·S,) bool
    labelled = add_node(nodes, "Not", [ignored], "/loss/labelled")
    where = add_node(nodes, "NonZero", [labelled], "/loss/nonzero")                            # (1, K)
    rows = add_node(nodes, "Reshape", [where, "/loss/rows"], "/loss/labelled_rows")            # (K,)
    labels = add_node(nodes, "Gather", [flat_labels, rows], "/loss/labelled_labels", axis=0)  # (K,)
    # One ignored row is always kept, so the LM head never sees zero rows (ORT 1.19's
    # backward then dies with SIGFPE): row 0 with label -100, which the loss skips.
    index = add_node(nodes, "Concat", ["/loss/ignored_row", rows], "/loss/index", axis=0)     # (1 + K,)
    kept_hidden = add_node(nodes, "Gather", [flat_hidden, index], "/loss/kept_hidden", axis=0)  # (1 + K, H)
    kept_labels = add_node(nodes, "Concat", ["/loss/ignored_label", labels], "/loss/kept_labels", axis=0)
    lm_head.input[0] = kept_hidden                                                             # logits (1 + K, V)
    at = list(graph.node).index(lm_head)
    for offset, node in enumerate(nodes):  # the gather runs before the LM head
        graph.node.insert(at + offset, node)
    graph.node.append(onnx.helper.make_node(
        "SoftmaxCrossEntropyLoss", [logits, kept_labels], [LOSS], name=LOSS,
        reduction="mean", ignore_index=IGNORE_INDEX,
    ))
    for info in list(graph.value_info):  # the exporter's (B, S, V) shape no longer holds
        if info.name == logits:
            graph.value_info.remove(info)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, []))
    return LOSS
