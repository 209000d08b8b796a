"""QLoRA training graphs dequantize each frozen weight next to its reader, forward and backward.

Checked on the saved training model and on the graph ONNX Runtime actually runs (its
optimized model, nodes in execution order): ORT must neither merge the backward copies
back into the forward ones nor run a dequantization long before its reader.
"""

import re

import onnx
import pytest

from edgetune.builder.rewrites.recompute import layers as recompute_layers
from edgetune.builder.rewrites.recompute.weights import SUFFIX
from edgetune.common import names

MAX_CHAIN = 6  # DequantizeLinear -> Add, Reshape, Transpose, Reshape (int4) -> reader


def _readers(graph: onnx.GraphProto) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            out.setdefault(name, []).append(i)
    return out


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_backward_reads_its_own_dequantized_weights(quant, method_bundle):
    bundle = method_bundle("llama", "qlora", quant=quant)
    graph = onnx.load(bundle / names.TRAINING_MODEL, load_external_data=False).graph
    readers = _readers(graph)
    weights = [
        n.output[0]
        for n in graph.node
        if n.name.startswith("/quant/") and re.fullmatch(f".*/weight({SUFFIX}\\d*)?", n.output[0])
    ]
    copies = [w for w in weights if SUFFIX in w]
    originals = set(weights) - set(copies)
    assert {c.split(SUFFIX)[0] for c in copies} == originals  # for the gradient and the layer's recomputation
    assert len(copies) > len(originals)
    for weight in weights:
        kinds = {
            "backward"
            if "_Grad/" in graph.node[i].name or graph.node[i].name.endswith(recompute_layers.SUFFIX)
            else "forward"
            for i in readers[weight]
        }
        assert kinds == ({"backward"} if SUFFIX in weight else {"forward"}), (weight, kinds)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_every_dequantization_waits_for_an_activation(quant, method_bundle):
    """A DequantizeLinear on constants alone may run at the very start of the step (ORT does so on SmolLM2)."""
    bundle = method_bundle("llama", "qlora", quant=quant)
    graph = onnx.load(bundle / names.TRAINING_MODEL, load_external_data=False).graph
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # topologically sorted
        if all(name in constant for name in node.input if name):
            assert node.op_type != "DequantizeLinear", node.name
            constant.update(node.output)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_ort_keeps_the_copies_and_runs_each_next_to_its_reader(quant, method_bundle, tmp_path):
    import onnxruntime as ort

    from edgetune.runtime.ort_training import CheckpointState, Module

    bundle = method_bundle("llama", "qlora", quant=quant)
    saved = onnx.load(bundle / names.TRAINING_MODEL, load_external_data=False).graph
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    state = CheckpointState.load_checkpoint(str(bundle / names.CHECKPOINT))
    Module(str(bundle / names.TRAINING_MODEL), state, None, session_options=options)
    graph = onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph

    def dequantizers(g):
        return [n for n in g.node if n.op_type == "DequantizeLinear"]

    assert len(dequantizers(graph)) == len(dequantizers(saved))  # no copy merged back
    readers = _readers(graph)
    for i, node in enumerate(graph.node):  # in ORT's execution order
        if node.op_type == "DequantizeLinear":
            weight = node.output[0].replace("/scaled", "/weight")  # int4: the end of the chain
            assert min(readers[node.output[0]]) - i <= MAX_CHAIN, node.name
            assert min(readers.get(weight, [i])) - i <= MAX_CHAIN, node.name
