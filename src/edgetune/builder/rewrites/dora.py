"""DoRA on top of the LoRA branch: W' = m · (W + s·ΔW) / ‖W + s·ΔW‖, as PEFT computes it.

PEFT (`peft/tuners/lora/dora.py`, `variants.py`) never builds W'; per adapted layer it adds

    y = base(x) + (m/n - 1) · (x·W) + (m/n) · s·(x·Aᵀ)·Bᵀ,   n = ‖W + s·B·A‖ per output row

where x·W is the bias-free base output (or, with LoRA dropout active in training, the base
recomputed from dropout(x)), and n is *detached*: it follows A and B in value but sends no
gradient to them. The graph does the same in its (in, out) layout: n = ReduceL2 over axis 0
of W + s·Aᵀ·Bᵀ. ORT has no stop-gradient op, but its gradient builder stops at every Cast to
a non-float type, so n goes through int64 and back as a fixed-point number with 2⁻³²
resolution. That round trip is exact for every norm in [2⁻⁹, 2³¹) (beyond it the error
is at most 2⁻³² absolute), and ORT then builds no gradient through the norm: PEFT's numbers.

The magnitude m is trainable, (out,), saved under PEFT's key `<path>.lora_magnitude_vector`.
In the inference graph it is an input like A and B; there `lora_scaling = 0` switches
DoRA off (m/n := 1) as it switches LoRA off, so "no adapter" needs no knowledge of ‖W‖.
"""

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edgetune.builder.graph import LinearSite, add_initializer, add_node, initializer_map, make_input
from edgetune.builder.rewrites.lora import add_lora
from edgetune.common.names import LORA_SCALING
from edgetune.common.peft import branch_prefix, lora_keys, magnitude_key
from edgetune.options import LoraSpec

FIXED_POINT = 2.0**32  # the detached norm's resolution is 1 / FIXED_POINT


def weight_norms(
    model: onnx.ModelProto, sites: list[LinearSite], scaling: float, weights: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """‖W + s·Aᵀ·Bᵀ‖ per output feature for each site, by magnitude key: PEFT's initial m.

    `weights` are in graph layout (Aᵀ (in, r), Bᵀ (r, out)).
    """
    inits = initializer_map(model.graph)
    norms = {}
    for site in sites:
        key_a, key_b = lora_keys(site.module_path)
        w = numpy_helper.to_array(inits[site.weight]).astype(np.float32)  # (in, out): see untranspose_gemms
        w = w + np.float32(scaling) * (weights[key_a] @ weights[key_b])  # (in, r)·(r, out)
        norms[magnitude_key(site.module_path)] = np.linalg.norm(w, axis=0).astype(np.float32)  # (out,)
    return norms


def add_dora(
    model: onnx.ModelProto, sites: list[LinearSite], spec: LoraSpec, weights: dict[str, np.ndarray], training: bool
) -> list[str]:
    """Insert a DoRA branch after every site; return the adapter tensor names (A, B, m per site).

    training=True: `weights` hold Aᵀ, Bᵀ and m (graph layout), all trainable.
    training=False: A, B and m are graph inputs.
    """
    graph = model.graph
    for site in sites:
        if training:
            add_initializer(graph, magnitude_key(site.module_path), weights[magnitude_key(site.module_path)])
        else:
            graph.input.append(make_input(magnitude_key(site.module_path), TensorProto.FLOAT, [site.out_features]))
    add_lora(
        model, sites, spec, weights, training, combine=lambda *args: _add_dora_output(graph, *args, training=training)
    )
    return [key for site in sites for key in (*lora_keys(site.module_path), magnitude_key(site.module_path))]


def _add_dora_output(
    graph: onnx.GraphProto,
    nodes: list,
    site: LinearSite,
    base: onnx.NodeProto,
    x: str,
    xab: str,
    y: str,
    training: bool,
) -> str:
    """Nodes computing y = base + (m/n - 1)·(x·W) + (m/n)·xAB, with n detached in training.

    `base` is the layer's MatMul/Gemm (output already renamed), `x` its input after LoRA
    dropout, `xab` the scaled LoRA output (..., out).
    """
    key_a, key_b = lora_keys(site.module_path)
    key_m = magnitude_key(site.module_path)
    p, w = branch_prefix(site.module_path), base.input[1]
    base_out = base.output[0]
    if x != base.input[0]:  # LoRA dropout: PEFT recomputes the base from dropout(x)
        plain = add_node(nodes, "MatMul", [x, w], f"{p}/dora_base")  # (..., out)
    elif len(base.input) > 2:  # Gemm with bias: DoRA rescales x·W only
        plain = add_node(nodes, "Sub", [base_out, base.input[2]], f"{p}/dora_base")
    else:
        plain = base_out
    delta = add_node(nodes, "MatMul", [key_a, key_b], f"{p}/delta")  # (in, r)·(r, out)
    delta = add_node(nodes, "Mul", [delta, LORA_SCALING], f"{p}/delta_scaled")
    merged = add_node(nodes, "Add", [w, delta], f"{p}/merged_weight")  # (in, out)
    add_initializer(graph, f"{p}/norm_axes", np.array([0], np.int64))
    norm = add_node(nodes, "ReduceL2", [merged, f"{p}/norm_axes"], f"{p}/norm", keepdims=0)  # (out,)
    add_initializer(graph, f"{p}/one", np.array(1.0, np.float32))
    if training:
        norm = _detach(graph, nodes, norm, p)
    scale = add_node(nodes, "Div", [key_m, norm], f"{p}/dora_scale")  # (out,) m/n
    if not training:  # lora_scaling = 0: adapter off, m/n := 1
        add_initializer(graph, f"{p}/zero", np.array(0.0, np.float32))
        off = add_node(nodes, "Equal", [LORA_SCALING, f"{p}/zero"], f"{p}/adapter_off")
        scale = add_node(nodes, "Where", [off, f"{p}/one", scale], f"{p}/dora_scale_or_one")
    minus_one = add_node(nodes, "Sub", [scale, f"{p}/one"], f"{p}/dora_scale_minus_one")
    rescaled = add_node(nodes, "Mul", [minus_one, plain], f"{p}/dora_rescaled_base")  # (..., out)
    lora = add_node(nodes, "Mul", [scale, xab], f"{p}/dora_lora")  # (..., out)
    extra = add_node(nodes, "Add", [rescaled, lora], f"{p}/dora_output")
    return add_node(nodes, "Add", [base_out, extra], y)


def transposed_sites(model: onnx.ModelProto, sites: list[LinearSite]) -> list[LinearSite]:
    """The sites whose Gemm reads W (out, in) with transB=1 (an encoder's pooler)."""
    nodes = {n.name: n for n in model.graph.node}
    return [s for s in sites if any(a.name == "transB" and a.i for a in nodes[s.node_name].attribute)]


def untranspose_gemms(model: onnx.ModelProto, sites: list[LinearSite]) -> None:
    """Store each transposed site's W as Wᵀ (in, out) and read it with transB=0, as DoRA's rewrite expects.

    (A Transpose node in the graph instead makes ORT 1.19's training optimizer fail with
    `unordered_map::at`.) The weights' values must be loaded.
    """
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for site in transposed_sites(model, sites):
        tensor = inits[site.weight]
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(tensor).T), tensor.name))
        next(a for a in nodes[site.node_name].attribute if a.name == "transB").i = 0


def _detach(graph: onnx.GraphProto, nodes: list, value: str, prefix: str) -> str:
    """`value` again, through an int64 fixed-point round trip that ORT builds no gradient through."""
    add_initializer(graph, f"{prefix}/fixed_point", np.array(FIXED_POINT, np.float32))
    add_initializer(graph, f"{prefix}/fixed_point_inv", np.array(1.0 / FIXED_POINT, np.float32))
    fixed = add_node(nodes, "Mul", [value, f"{prefix}/fixed_point"], f"{prefix}/norm_fixed")
    fixed = add_node(nodes, "Cast", [fixed], f"{prefix}/norm_int", to=TensorProto.INT64)  # stop-gradient edge
    fixed = add_node(nodes, "Cast", [fixed], f"{prefix}/norm_float", to=TensorProto.FLOAT)
    return add_node(nodes, "Mul", [fixed, f"{prefix}/fixed_point_inv"], f"{prefix}/norm_detached")
