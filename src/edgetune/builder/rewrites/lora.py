"""LoRA as an ONNX graph rewrite: y = x·W + s·(x·Aᵀ)·Bᵀ, with s = alpha/r (or alpha/√r).

Adapter tensors are named with PEFT's keys but stored transposed: the graph holds
Aᵀ (in, r) and Bᵀ (r, out), because ORT 1.19's training optimizer fails
(`unordered_map::at`) on a Transpose of a trainable tensor, and MatMul wants them so
anyway. Adapter I/O transposes every tensor, nothing else. In the training graph they are
initializers (A kaiming-uniform as PEFT initialises it, B = 0); in the inference graph
they are graph inputs with a symbolic rank, so adapters are swapped by feeding other
arrays, never by rewriting the base weights.
"""

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto

from edgetune.builder.graph import LinearSite, add_initializer, add_node, make_input
from edgetune.common.names import LORA_SCALING
from edgetune.common.peft import base_output, branch_prefix, lora_keys
from edgetune.options import LoraSpec


def init_adapter(sites: list[LinearSite], spec: LoraSpec, seed: int) -> dict[str, np.ndarray]:
    """PEFT's default init, in graph layout: A ~ U(-1/√in, 1/√in) (kaiming-uniform, a=√5), B = 0."""
    rng = np.random.default_rng(seed)
    weights = {}
    for site in sites:
        key_a, key_b = lora_keys(site.module_path)
        bound = 1.0 / math.sqrt(site.in_features)
        weights[key_a] = rng.uniform(-bound, bound, (spec.rank, site.in_features)).astype(np.float32).T.copy()
        weights[key_b] = np.zeros((spec.rank, site.out_features), np.float32)
    return weights


def add_lora(
    model: onnx.ModelProto,
    sites: list[LinearSite],
    spec: LoraSpec,
    weights: dict[str, np.ndarray] | None,
    training: bool,
    combine: Callable | None = None,
) -> list[str]:
    """Insert a LoRA branch after every site; return the adapter tensor names.

    training=True: A/B become initializers from `weights`, dropout is applied to x.
    training=False: A/B and the scalar `lora_scaling` become graph inputs.
    `combine(nodes, site, base_node, x, xab, y)` appends the nodes producing the layer's
    output `y` (default: y = base + xAB; DoRA passes its own).
    """
    graph = model.graph
    by_name = {s.node_name: s for s in sites}
    names: list[str] = []
    if training:
        add_initializer(graph, LORA_SCALING, np.array(spec.scaling, np.float32))
        if spec.dropout > 0:
            add_initializer(graph, "lora_dropout_ratio", np.array(spec.dropout, np.float32))
            add_initializer(graph, "lora_dropout_training", np.array(True))
    else:
        graph.input.append(make_input(LORA_SCALING, TensorProto.FLOAT, []))

    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new_nodes.append(node)
        site = by_name.get(node.name)
        if site is None:
            continue
        key_a, key_b = lora_keys(site.module_path)
        names += [key_a, key_b]
        if training:
            add_initializer(graph, key_a, weights[key_a])
            add_initializer(graph, key_b, weights[key_b])
        else:
            graph.input.append(make_input(key_a, TensorProto.FLOAT, [site.in_features, "lora_rank"]))
            graph.input.append(make_input(key_b, TensorProto.FLOAT, ["lora_rank", site.out_features]))
        p = branch_prefix(site.module_path)
        x, y = node.input[0], node.output[0]
        node.output[0] = base_output(site.module_path)
        if training and spec.dropout > 0:
            x = add_node(new_nodes, "Dropout", [x, "lora_dropout_ratio", "lora_dropout_training"], f"{p}/dropout")
            new_nodes[-1].output.append(f"{p}/dropout_mask")  # DropoutGrad needs the mask
        xa = add_node(new_nodes, "MatMul", [x, key_a], f"{p}/xA")  # (..., in)·(in, r) -> (..., r)
        xa = add_node(new_nodes, "Mul", [xa, LORA_SCALING], f"{p}/xA_scaled")  # scale the narrow side
        xab = add_node(new_nodes, "MatMul", [xa, key_b], f"{p}/xAB")  # (..., r)·(r, out) -> (..., out)
        if combine is None:
            add_node(new_nodes, "Add", [node.output[0], xab], y)
        else:
            combine(new_nodes, site, node, x, xab, y)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return names
