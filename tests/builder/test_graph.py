"""The graph vocabulary and the small rewrites, on hand-built graphs (no export needed)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.builder.graph import ancestors, constant_tensors, copy_node, topological
from edgetune.builder.rewrites.nan_guards import drop_nan_guards
from edgetune.builder.rewrites.recompute.attention import recompute_attention_probs


def node(op, inputs, output, **attrs):
    """A node named after its output, as the rewrites name theirs."""
    return helper.make_node(op, inputs, [output], name=output, **attrs)


def test_topological_keeps_list_order_where_it_can_and_puts_producers_first():
    nodes = [node("Relu", ["b"], "c"), node("Relu", ["x"], "a"), node("Relu", ["a"], "b"), node("Relu", ["x"], "d")]
    order = [n.output[0] for n in topological(nodes)]
    assert order == ["a", "b", "c", "d"]  # c waits for b; d has no producer and keeps its place after them


def test_topological_names_a_node_on_a_cycle():
    with pytest.raises(ValueError, match="cycle through node"):
        topological([node("Relu", ["b"], "a"), node("Relu", ["a"], "b")])


def test_copy_node_renames_inputs_and_outputs_and_records_them():
    original = helper.make_node("Split", ["x", "sizes"], ["left", "right"], name="split", axis=1)
    renamed = {"x": "x_late"}
    copy = copy_node(original, "/copy", renamed)
    assert list(copy.input) == ["x_late", "sizes"] and copy.name == "split/copy"
    assert list(copy.output) == ["left/copy", "right/copy"]
    assert renamed == {"x": "x_late", "left": "left/copy", "right": "right/copy"}
    assert list(original.output) == ["left", "right"] and original.attribute[0].i == 1  # untouched


def test_ancestors_follow_inputs_to_the_forward_pass_only():
    nodes = [node("Relu", ["x"], "a"), node("Relu", ["a"], "loss"), node("Neg", ["loss"], "loss_grad")]
    producers = {n.output[0]: n for n in nodes}
    assert ancestors(["loss"], producers) == {id(nodes[0]), id(nodes[1])}


def test_constant_tensors_propagate_through_nodes_of_constants():
    graph = helper.make_graph(
        [node("Cast", ["w"], "w_float", to=TensorProto.FLOAT), node("MatMul", ["x", "w_float"], "y")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.int8), "w")],
    )
    assert constant_tensors(graph) == {"w", "w_float"}


def _guarded_softmax_graph() -> onnx.ModelProto:
    """y = Where(IsNaN(p), 0, p) * 2, p = Softmax(x): the exporter's guard after attention's softmax."""
    nodes = [
        node("Softmax", ["x"], "p", axis=-1),
        node("IsNaN", ["p"], "nan"),
        node("Where", ["nan", "zero", "p"], "guarded"),
        node("Mul", ["guarded", "two"], "y"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_drop_nan_guards_removes_the_guard_and_keeps_the_values():
    model = _guarded_softmax_graph()
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    before = _run(model, {"x": x})
    assert drop_nan_guards(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Softmax", "Mul"]
    assert model.graph.node[1].input[0] == "p"
    np.testing.assert_array_equal(_run(model, {"x": x}), before)


def test_drop_nan_guards_keeps_a_where_that_does_not_zero():
    model = _guarded_softmax_graph()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(1.0, np.float32), "zero"))
    assert drop_nan_guards(model.graph) == 0 and len(model.graph.node) == 4


def test_recompute_attention_probs_gives_the_backward_readers_a_late_copy():
    # Forward: s = Q·Kᵀ · scale, P = softmax(s), O = P·V. Backward (as ORT names it): O_grad arrives,
    # dV = Pᵀ·dO reads P, dP = dO·Vᵀ; the softmax gradient reads P too.
    nodes = [
        node("Transpose", ["K"], "Kt", perm=[0, 2, 1]),
        node("MatMul", ["Q", "Kt"], "scores"),
        node("Mul", ["scores", "scale"], "scaled"),
        node("Softmax", ["scaled"], "P", axis=-1),
        node("MatMul", ["P", "V"], "O"),
        node("Neg", ["O"], "O_grad"),
        node("Transpose", ["P"], "Pt", perm=[0, 2, 1]),
        node("MatMul", ["Pt", "O_grad"], "V_grad"),
        helper.make_node(
            "SoftmaxGrad_13", ["O_grad", "P"], ["scaled_grad"], name="softmax_grad", domain="com.microsoft", axis=-1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 4]) for n in ("Q", "K", "V")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("V_grad",)],
        [numpy_helper.from_array(np.array(0.5, np.float32), "scale")],
    )
    assert recompute_attention_probs(graph) == 1
    by_output = {o: n for n in graph.node for o in n.output}
    late_p = by_output["Pt"].input[0]
    assert late_p != "P" and late_p.endswith("/recompute")
    assert by_output["scaled_grad"].input[1] == late_p
    assert by_output["O"].input[0] == "P"  # the forward pass keeps its own
    chain, name = [], late_p
    while name in by_output and by_output[name].name.endswith("/recompute"):
        chain.append(by_output[name].op_type)
        name = by_output[name].input[0]
    assert chain == ["Softmax", "Mul", "MatMul"]
    assert by_output[name].op_type == "Reshape" and by_output[name].input[0] == "Q"  # Q, delayed by dO's shape
    assert by_output[by_output[name].input[1]].input == ["O_grad"]
