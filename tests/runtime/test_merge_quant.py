"""`merge --quant int4`'s Linears: x·W in Q4_1 blocks on MatMulNBits plus the block minimums' share."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.builder.rewrites.quant.formats import dequantize
from edgetune.common.int4 import quantize_int4
from edgetune.runtime.merge_quant import INT4_BLOCK, quantize_merged


def _two_linears(n_in: int, rank: int, bias: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """x (.., n_in) -> hidden = x·W (+ b) (.., 40) -> logits = hidden·H: the first is a Linear, the second the head."""
    rng = np.random.default_rng(n_in)
    w = (rng.standard_normal((n_in, 40)) * 0.1).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(rng.standard_normal((40, 16)).astype(np.float32), "H"),
    ]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "b"))
        first = helper.make_node("Gemm", ["x", "W", "b"], ["hidden"], name="/linear/Gemm")
    else:
        first = helper.make_node("MatMul", ["x", "W"], ["hidden"], name="/linear/MatMul")
    head = helper.make_node("MatMul", ["hidden", "H"], ["logits"], name="/lm_head/MatMul")
    shape = ["b", "s", n_in][-rank:]
    graph = helper.make_graph(
        [first, head],
        "two_linears",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("hidden", "logits")],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


@pytest.mark.parametrize("n_in,rank,bias", [(64, 3, False), (72, 3, False), (64, 2, True), (72, 2, True)])
def test_an_int4_linear_computes_x_times_its_q4_1_weight(n_in, rank, bias):
    """Padded last blocks (72 = 2·32 + 8) and Gemms with a bias included. The bound, 1% of max |y| (measured
    0.4-0.6%), is MatMulNBits' int8 activations per block (accuracy_level 4): each input is rounded by up to
    1/254 of its block's largest. Dropping the minimums' share would miss by tens of percent."""
    model, w = _two_linears(n_in, rank, bias)
    b = numpy_helper.to_array(model.graph.initializer[2]) if bias else 0.0
    quantize_merged(model, "int4", keep_float="/none")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("MatMulIntegerToFloat") == 1  # the head is int8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((2, 3, n_in)[-rank:]).astype(np.float32)
    hidden = session.run(["hidden"], {"x": x})[0]
    expected = x @ dequantize(quantize_int4(w, INT4_BLOCK), w.shape) + b
    assert np.abs(hidden - expected).max() < 1e-2 * np.abs(expected).max()
    assert np.abs(hidden - (x @ w + b)).max() > 1e-4  # really 4-bit: not the float product
