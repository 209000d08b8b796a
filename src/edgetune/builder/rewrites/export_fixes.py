"""Make an Optimum export fit for ORT's gradient builder (applied to every graph as it is loaded)."""

import onnx


def materialize_identity_initializers(graph: onnx.GraphProto) -> int:
    """Replace every `Identity(initializer)` by a copy of the initializer under its output name.

    The TorchScript exporter deduplicates equal tensors (all-ones norms, tied weights)
    through Identity nodes; ORT's gradient builder then emits one gradient per consumer
    under the same name. Copies cost nothing on disk: the shared weights file stores
    equal tensors once.
    """
    inits = {t.name: t for t in graph.initializer}
    aliases = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]
    for node in aliases:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
    dropped = {id(n) for n in aliases}
    kept = [n for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    return len(aliases)


def expose_saved_outputs(graph: onnx.GraphProto) -> int:
    """Give LayerNormalization its optional Mean/InvStdDev outputs, which its gradient reads.

    The exporter emits only the first output; ORT's LayerNormalizationGrad then fails
    with `i < node_->OutputDefs().size()`.
    """
    count = 0
    for node in graph.node:
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            node.output.extend([f"{node.output[0]}/mean", f"{node.output[0]}/inv_std_dev"])
            count += 1
    return count
