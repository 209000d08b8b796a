"""The serving graph's LM head runs on each row's last position only, and dead nodes go.

A prompt of S tokens needs the logits of its last position alone: the head on every
position would cost S·hidden·vocab multiply-adds (SmolLM2, S = 512: 29 GFLOP, about as much
as a fifth of the prefill) and an (S, vocab) output.
"""

import numpy as np
import onnx

from edgetune.builder.graph import add_initializer, ancestors, lm_head_chain, topological
from edgetune.common.errors import EdgetuneError
from edgetune.common.names import LOGITS


def head_on_last_position(model: onnx.ModelProto) -> None:
    """Feed the LM head (the MatMul writing `logits`, or its elementwise tail) the last position's state: (B, 1, H)."""
    graph = model.graph
    head, _ = lm_head_chain(graph, LOGITS)  # a tail: Granite's logits / scale, Gemma 2's soft-capping
    if head is None or head.op_type not in ("MatMul", "Gemm"):
        raise EdgetuneError(f"the graph's '{LOGITS}' do not come from an LM head MatMul")
    p = "/serve/last_position"
    for name, value in (("starts", -1), ("ends", np.iinfo(np.int64).max), ("axes", 1)):
        add_initializer(graph, f"{p}/{name}", np.array([value], np.int64))
    x = head.input[0]
    node = onnx.helper.make_node("Slice", [x, f"{p}/starts", f"{p}/ends", f"{p}/axes"], [p], name=p)
    head.input[0] = p
    graph.node.insert(list(graph.node).index(head), node)


def prune(model: onnx.ModelProto) -> None:
    """Drop nodes no graph output depends on, then inputs and initializers nothing reads; sort the rest."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    needed = ancestors([o.name for o in graph.output], producers)
    kept = topological([n for n in graph.node if id(n) in needed])
    del graph.node[:]
    graph.node.extend(kept)
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    for i in reversed(range(len(graph.input))):
        if graph.input[i].name not in used:
            del graph.input[i]
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:
            del graph.initializer[i]
    for i in reversed(range(len(graph.value_info))):
        if graph.value_info[i].name not in used:
            del graph.value_info[i]
