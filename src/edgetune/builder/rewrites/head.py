"""The task head of an encoder, trained whole: PEFT's `modules_to_save`.

The head's tensors (a classifier's weight and bias, RoBERTa's dense + out_proj, DistilBERT's
pre_classifier too) are renamed to the keys PEFT saves them under,
`base_model.model.<module>.weight` / `.bias`, so adapter I/O treats them like the LoRA
tensors: trainable initializers in the training graph, graph inputs in the inference
graph (an adapter brings its own head). Like the LoRA tensors, weights are held (in, out):
a Gemm that reads (out, in) with transB=1 reads the transposed tensor with transB=0, and
adapter I/O transposes every tensor (a bias is its own transpose).

Each head node gets its own copy of a tensor, so a base layer that the exporter made
share an equal tensor (all-zero biases of a random init) stays frozen.
"""

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.builder.graph import initializer_map, module_path
from edgetune.common.peft import head_key


def head_initializers(graph: onnx.GraphProto, modules: tuple[str, ...]) -> dict[tuple[str, int], str]:
    """(node name, input index) -> PEFT key, for every float initializer a head module's Linear reads."""
    inits = initializer_map(graph)
    found = {}
    for node in graph.node:
        path = module_path(node.name)
        if not any(path == m or path.startswith(m + ".") for m in modules):
            continue
        if node.op_type in ("Gemm", "MatMul", "Add"):
            for index, name in enumerate(node.input):
                tensor = inits.get(name)
                if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
                    continue
                kind = "bias" if node.op_type == "Add" or index == 2 else "weight"
                found[(node.name, index)] = head_key(path, kind)
    return found


def source_tensors(graph: onnx.GraphProto, found: dict[tuple[str, int], str]) -> set[str]:
    """The initializers the head reads now (to load their values before `add_head`)."""
    inits = initializer_map(graph)
    by_name = {n.name: n for n in graph.node}
    return {inits[by_name[node].input[i]].name for node, i in found}


def add_head(model: onnx.ModelProto, found: dict[tuple[str, int], str], training: bool) -> list[str]:
    """Give the head its PEFT-named tensors (initializers when training, else graph inputs); return the keys."""
    graph = model.graph
    inits = initializer_map(graph)
    by_name = {n.name: n for n in graph.node}
    keys, replaced = [], set()
    for (node_name, index), key in found.items():
        node = by_name[node_name]
        replaced.add(node.input[index])
        value = numpy_helper.to_array(inits[node.input[index]])
        if node.op_type == "Gemm" and index == 1:
            trans_b = [a for a in node.attribute if a.name == "transB" and a.i]
            if trans_b:  # W (out, in) -> Wᵀ (in, out), read untransposed
                value, trans_b[0].i = value.T, 0
        node.input[index] = key
        keys.append(key)
        if training:
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), key))
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(key, onnx.TensorProto.FLOAT, list(value.shape)))
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used or t.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return keys
