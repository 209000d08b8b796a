"""One adapter folded into the base-model serving graph's weights: a single active adapter at the base model's speed.

The lean graph (`lean_graph`) runs the base model without the adapter bank. Folding gives
it an adapter's effective weights instead, per adapted Linear (W (in, out) the bundle's
float base, A (in, R) = Aᵀ, B (R, out) = s·Bᵀ, as the bank holds them):

    LoRA   W' = W + A·B
    DoRA   W' = g ⊙ (W + A·B), g = m / ‖W + A·B‖ per output column (a bias is not rescaled)

written in the serving graph's own form of that Linear:

    float  the MatMul's (or Gemm's) constant weight
    int8   MatMulIntegerToFloat's q and scale, W' quantized per output column
           (`common/int8.py`): what serving a model merged with the adapter computes

The folded tensors replace the lean graph's initializers of the same names when a
session opens (`SessionOptions.add_initializer`), so weights are prepacked as usual.
int4 serving weights cannot take an adapter in (requantized Q4_1 blocks lose its delta:
docs/design.md, "Folding one adapter"), and QLoRA bundles have no float base: there the
engine keeps the branches, reading the adapter as constants (`lean_graph`).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from edgetune.common.int8 import quantize_int8
from edgetune.common.peft import base_output

FLOAT, INT8 = "float", "int8"


@dataclass(frozen=True)
class FoldSite:
    """Where one adapted Linear's base weight sits in the lean graph."""

    kind: str  # FLOAT or INT8
    names: tuple[str, ...]  # FLOAT: (W,); INT8: (q, scale)
    transposed: bool = False  # FLOAT: a Gemm with transB holds W as (out, in)


def fold_sites(model: onnx.ModelProto, modules: list[str]) -> dict[str, FoldSite] | None:
    """Each adapted module's weight initializers in the lean graph `model`; None if one is not a float or int8
    weight of its own (int4, a QLoRA base, a shared tensor)."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    constants = {t.name for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    sites = {}
    for module in modules:
        site = _site(producers.get(base_output(module)), producers, constants)
        if site is None or any(readers.get(n) != 1 for n in site.names):
            return None
        sites[module] = site
    return sites


def _site(node: onnx.NodeProto | None, producers: dict, constants: set) -> FoldSite | None:
    """The fold site of the node writing a module's base output: x·W (+ b), or int8's MatMulIntegerToFloat · row
    scale (+ b)."""
    if node is None:
        return None
    if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        return FoldSite(FLOAT, (node.input[1],), trans_b)
    if node.op_type == "Add" and node.input[1] in constants:  # a Gemm's bias after int8's row scale
        node = producers.get(node.input[0])
    product = producers.get(node.input[0]) if node is not None and node.op_type == "Mul" else None
    if product is not None and product.op_type == "MatMulIntegerToFloat":
        q, scale = product.input[1], product.input[3]
        if q in constants and scale in constants:
            return FoldSite(INT8, (q, scale))
    return None


def folded_weight(w: np.ndarray, a: np.ndarray, b: np.ndarray, g: np.ndarray | None = None) -> np.ndarray:
    """W' = W + A·B, times g per output column for DoRA; w (in, out), a (in, R), b (R, out), g (out,)."""
    merged = w + a @ b  # (in, out)
    return merged * g[None, :] if g is not None else merged


def site_tensors(site: FoldSite, w: np.ndarray) -> dict[str, np.ndarray]:
    """The initializers holding the weight `w` (in, out) in the site's form."""
    if site.kind == FLOAT:
        return {site.names[0]: np.ascontiguousarray(w.T if site.transposed else w, np.float32)}
    t = quantize_int8(w)  # q (in, out), scale (out,)
    return {site.names[0]: t["q"], site.names[1]: t["scale"]}


def fold_tensors(
    sites: dict[str, FoldSite], weight_of: Callable[[str], np.ndarray], branch_of: Callable[[str], tuple]
) -> dict[str, np.ndarray]:
    """Every site's initializers with its adapter folded in; weight_of(module) is the float base W (in, out),
    branch_of(module) the adapter's (A, B, g or None)."""
    tensors = {}
    for module, site in sites.items():
        tensors |= site_tensors(site, folded_weight(weight_of(module), *branch_of(module)))
    return tensors
