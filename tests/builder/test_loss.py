"""The loss over vocabulary chunks equals cross-entropy over the whole vocabulary.

Its gradients are checked against PEFT in test_qlora.
"""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from edgetune.builder.rewrites.loss import IGNORE_INDEX, chunked_cross_entropy
from edgetune.common.names import LOSS

EDGES = [(0, 7), (7, 14), (14, 20)]  # uneven chunks of a 20-entry vocabulary


def _run(logits: np.ndarray, labels: np.ndarray) -> float:
    """The chunked loss of `logits` (N, V) split at EDGES, run in ONNX Runtime."""
    graph = helper.make_graph([], "loss", [], [helper.make_tensor_value_info(LOSS, TensorProto.FLOAT, [])])
    names = []
    for k, (start, end) in enumerate(EDGES):
        graph.initializer.append(numpy_helper.from_array(logits[:, start:end].copy(), f"chunk{k}"))
        names.append(f"chunk{k}")
    graph.initializer.append(numpy_helper.from_array(labels, "labels"))
    graph.node.extend(chunked_cross_entropy(graph, names, EDGES, "labels"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(session.run([LOSS], {})[0])


def test_chunked_cross_entropy_equals_cross_entropy_over_the_vocabulary():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((6, 20)) * 5).astype(np.float32)  # wide logits: log-sum-exp must be stable
    labels = np.array([IGNORE_INDEX, 0, 6, 7, 19, 13], np.int64)  # every chunk's first and last entries
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), ignore_index=IGNORE_INDEX
    )
    np.testing.assert_allclose(_run(logits, labels), float(expected), rtol=1e-6)
    labels[1:3] = IGNORE_INDEX  # the mean is over labelled rows only
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits), torch.from_numpy(labels), ignore_index=IGNORE_INDEX
    )
    np.testing.assert_allclose(_run(logits, labels), float(expected), rtol=1e-6)
