"""The causal-LM loss block: mean cross-entropy over tokens whose label is not -100.

Labels arrive already shifted (labels[t] is the target of position t), so the block only
flattens logits (B, S, V) -> (B·S, V) and labels (B, S) -> (B·S,).
"""

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.build.graph import add_initializer, add_node, make_input
from edgetune.common.names import LABELS, LOSS

IGNORE_INDEX = -100


def add_causal_lm_loss(model: onnx.ModelProto, vocab_size: int, logits: str = "logits") -> str:
    """Append the loss to the graph, make `loss` its only output, and return its name."""
    graph = model.graph
    graph.input.append(make_input(LABELS, TensorProto.INT64, ["batch_size", "sequence_length"]))
    add_initializer(graph, "/loss/logits_shape", np.array([-1, vocab_size], np.int64))
    add_initializer(graph, "/loss/labels_shape", np.array([-1], np.int64))
    nodes: list = []
    flat_logits = add_node(nodes, "Reshape", [logits, "/loss/logits_shape"], "/loss/flat_logits")  # (B·S, V)
    flat_labels = add_node(nodes, "Reshape", [LABELS, "/loss/labels_shape"], "/loss/flat_labels")  # (B·S,)
    add_node(
        nodes, "SoftmaxCrossEntropyLoss", [flat_logits, flat_labels], LOSS,
        reduction="mean", ignore_index=IGNORE_INDEX,
    )
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, []))
    return LOSS
