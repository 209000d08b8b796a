"""The losses of the encoder tasks, as transformers' `*For<Task>` models compute them.

    text-classification   logits (B, C), labels (B,): cross-entropy, mean over the batch
    token-classification  logits (B, S, C), labels (B, S), -100 where no loss is taken (the
                          later sub-tokens of a word, special tokens, padding): mean over
                          the labelled tokens
    question-answering    start/end logits (B, S), start/end positions (B,): the mean of the
                          two cross-entropies

Classification losses take a `class_weights` input (C,): torch's `CrossEntropyLoss(weight=)`,
whose mean divides by the labelled rows' summed weight; all ones give the plain loss.
The graph's outputs become `loss` first (ORT builds the gradient from the first output),
then the task's own outputs, so training and eval steps also return the logits.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgetune.builder.graph import add_initializer, add_node, make_input
from edgetune.common.names import (
    CLASS_WEIGHTS,
    END_LOGITS,
    END_POSITIONS,
    LABELS,
    LOGITS,
    LOSS,
    START_LOGITS,
    START_POSITIONS,
)

IGNORE_INDEX = -100


def add_sequence_classification_loss(model: onnx.ModelProto) -> list[str]:
    """loss = CE(logits (B, C), labels (B,); class_weights); returns the graph outputs."""
    graph = model.graph
    graph.input.append(make_input(LABELS, TensorProto.INT64, ["batch_size"]))
    graph.input.append(make_input(CLASS_WEIGHTS, TensorProto.FLOAT, ["num_labels"]))
    nodes: list = []
    _cross_entropy(nodes, LOGITS, LABELS, LOSS, weights=CLASS_WEIGHTS)
    return _finish(graph, nodes, [LOSS, LOGITS])


def add_token_classification_loss(model: onnx.ModelProto) -> list[str]:
    """loss = CE over the labelled tokens of logits (B, S, C), labels (B, S); returns the graph outputs."""
    graph = model.graph
    graph.input.append(make_input(LABELS, TensorProto.INT64, ["batch_size", "sequence_length"]))
    graph.input.append(make_input(CLASS_WEIGHTS, TensorProto.FLOAT, ["num_labels"]))
    p = "/loss"
    add_initializer(graph, f"{p}/rows", np.array([-1], np.int64))
    nodes: list = []
    flat_shape = add_node(nodes, "Shape", [LOGITS], f"{p}/logits_shape", start=-1)  # [C]
    flat_shape = add_node(nodes, "Concat", [f"{p}/rows", flat_shape], f"{p}/flat_shape", axis=0)  # [-1, C]
    flat_logits = add_node(nodes, "Reshape", [LOGITS, flat_shape], f"{p}/flat_logits")  # (B·S, C)
    flat_labels = add_node(nodes, "Reshape", [LABELS, f"{p}/rows"], f"{p}/flat_labels")  # (B·S,)
    _cross_entropy(nodes, flat_logits, flat_labels, LOSS, weights=CLASS_WEIGHTS)
    return _finish(graph, nodes, [LOSS, LOGITS])


def add_question_answering_loss(model: onnx.ModelProto) -> list[str]:
    """loss = (CE(start_logits, start_positions) + CE(end_logits, end_positions)) / 2; returns the graph outputs."""
    graph = model.graph
    for name in (START_POSITIONS, END_POSITIONS):
        graph.input.append(make_input(name, TensorProto.INT64, ["batch_size"]))
    add_initializer(graph, "/loss/half", np.array(0.5, np.float32))
    nodes: list = []
    start = _cross_entropy(nodes, START_LOGITS, START_POSITIONS, "/loss/start")  # (B, S) vs (B,)
    end = _cross_entropy(nodes, END_LOGITS, END_POSITIONS, "/loss/end")
    both = add_node(nodes, "Add", [start, end], "/loss/sum")
    add_node(nodes, "Mul", [both, "/loss/half"], LOSS)
    return _finish(graph, nodes, [LOSS, START_LOGITS, END_LOGITS])


def _cross_entropy(nodes: list, logits: str, labels: str, output: str, weights: str | None = None) -> str:
    """Mean cross-entropy of logits (N, C) against labels (N,), rows labelled -100 skipped."""
    inputs = [logits, labels] + ([weights] if weights else [])
    nodes.append(
        helper.make_node(
            "SoftmaxCrossEntropyLoss", inputs, [output], name=output, reduction="mean", ignore_index=IGNORE_INDEX
        )
    )
    return output


def _finish(graph: onnx.GraphProto, nodes: list, outputs: list[str]) -> list[str]:
    """Append the loss nodes and make `outputs` the graph's outputs, loss first."""
    graph.node.extend(nodes)
    kept = {o.name: o for o in graph.output}
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, []))
    graph.output.extend(kept[name] for name in outputs[1:])
    return outputs
