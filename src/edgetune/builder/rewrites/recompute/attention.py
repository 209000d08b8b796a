"""Recompute attention probabilities in the backward pass instead of keeping them.

ORT keeps every forward tensor the gradient graph reads until the backward pass gets to
it. Per layer, the largest is attention's softmax output P = softmax(Q·Kᵀ + mask), a
(B, H, S, S) tensor: at seq-len 512 it outweighs everything else a layer keeps. Q and K
are kept anyway (the score MatMul's gradient reads them), so the backward pass can rebuild
P from them for one extra (B, H, S, S) MatMul per layer.

The rewrite copies the chain `MatMul(Q, Kᵀ) -> … -> Softmax` for the gradient nodes that
read P. ORT would run a copy as soon as its inputs exist, i.e. during the forward pass,
and keep its output just the same; so the copy's Q goes through
`Reshape(Q, Shape(dO))`, where dO is the gradient arriving at the attention output
`MatMul(P, V)`. That tensor has Q's shape (B, H, S, D) and exists only once the backward
pass has reached the layer, which is when the copy runs. The copy's nodes differ from the
originals in that input, so ORT's common-subexpression pass does not merge them back.
"""

import onnx

from edgetune.builder.graph import add_node, copy_node

SCORE_OPS = ("Add", "Sub", "Mul", "Div", "Where")  # scaling and masking between Q·Kᵀ and Softmax


def recompute_attention_probs(graph: onnx.GraphProto) -> int:
    """Rewrite a training graph (forward + gradient nodes) in place; return the layers rewritten."""
    nodes = list(graph.node)
    producers = {out: node for node in nodes for out in node.output}
    readers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    gradient_inputs = {name for node in nodes for name in node.input if name.endswith("_grad")}
    copies = []
    for softmax in (n for n in nodes if n.op_type == "Softmax"):
        probs = softmax.output[0]
        attention = [n for n in readers.get(probs, []) if n.op_type == "MatMul" and n.input[0] == probs]
        d_out = attention[0].output[0] + "_grad" if len(attention) == 1 else None
        chain = _score_chain(softmax, producers)
        if chain is None or d_out not in gradient_inputs:
            continue
        backward = [n for n in readers[probs] if n is not attention[0]]
        copies.append(_copy_for_backward(chain, d_out, backward))
    for layer in reversed(copies):  # last layer first, as the backward pass meets them
        graph.node.extend(layer)
    return len(copies)


def _score_chain(softmax, producers) -> list | None:
    """[MatMul(Q, Kᵀ), score ops…, Softmax], following the first input that leads to the MatMul."""
    chain, node = [softmax], producers.get(softmax.input[0])
    while node is not None and node.op_type in SCORE_OPS and len(chain) < 6:
        chain.append(node)
        data = node.input[1] if node.op_type == "Where" else node.input[0]
        node = producers.get(data)
    if node is None or node.op_type != "MatMul":
        return None
    return [node] + chain[:0:-1] + [softmax]


def _copy_for_backward(chain: list, d_out: str, backward: list) -> list:
    """The copied chain, fed from Reshape(Q, Shape(dO)); `backward` nodes read its softmax."""
    tag = chain[-1].name or chain[-1].output[0]
    copied: list = []
    shape = add_node(copied, "Shape", [d_out], f"{tag}/recompute/dO_shape")
    late_q = add_node(copied, "Reshape", [chain[0].input[0], shape], f"{tag}/recompute/Q")
    renamed = {chain[0].input[0]: late_q}
    copied += [copy_node(node, "/recompute", renamed) for node in chain]
    probs = chain[-1].output[0]
    for node in backward:
        node.input[:] = [renamed[probs] if name == probs else name for name in node.input]
    return copied
