"""A base weight the device can update: W + Δ in front of every adapted Linear (FedEx-LoRA).

FedEx-LoRA folds the part of the clients' average that the averaged adapter cannot
express, s·(Σ wᵢ·Bᵢ·Aᵢ − B̄·Ā), into the frozen base. The base weights of a bundle live
once in base_weights.bin, shared by every graph and covered by the manifest's hashes, so
they are not rewritten: each adapted layer reads `W + Δ` instead, where Δ (named
`common.peft.delta_key(path)`, graph layout (in, out), zeros at build time) is an ORT
frozen parameter. It lives in the checkpoint, where the runtime sets it like an adapter
tensor, and receives no gradient. The inference graph has no Δ: a result with a delta is
served merged (`edgetune merge` folds Δ + s·B·A into W).
"""

import numpy as np
import onnx

from edgetune.builder.graph import LinearSite, add_initializer, add_node
from edgetune.common.errors import ConfigError
from edgetune.common.peft import branch_prefix, delta_key


def add_base_delta(model: onnx.ModelProto, sites: list[LinearSite]) -> list[str]:
    """Make each site's weight input `W + Δ`; return the Δ tensor names (zero initializers)."""
    graph = model.graph
    by_name = {s.node_name: s for s in sites}
    new_nodes: list[onnx.NodeProto] = []
    names = []
    for node in graph.node:
        site = by_name.get(node.name)
        if site is not None:
            if any(a.name == "transB" and a.i for a in node.attribute):
                raise ConfigError("base_delta", f"{site.module_path}: a transposed Gemm weight is not supported")
            key = delta_key(site.module_path)
            add_initializer(graph, key, np.zeros((site.in_features, site.out_features), np.float32))  # (in, out)
            node.input[1] = add_node(
                new_nodes, "Add", [node.input[1], key], f"{branch_prefix(site.module_path)}/base_plus_delta"
            )
            names.append(key)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return names
