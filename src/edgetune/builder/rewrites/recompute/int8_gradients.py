"""int8 compute's backward half: the input gradients dY·Wᵀ of the frozen int8 weights as int8 GEMMs.

ORT's gradient of y = x·W, W = DequantizeLinear(q, s) frozen, is dX = FusedMatMul(dY, W,
transB=1) (a Gemm for a Gemm layer). W's scales s, one per output channel, lie along that
product's inner dimension, so they move onto dY:

    dX = dY·(q·diag(s))ᵀ = (dY·diag(s))·qᵀ

(dY·diag(s)) is quantized per row, in one pass (gradients are noisy by nature, as in
SwitchBack), and multiplied by qᵀ, which the graph takes as Transpose(q): ORT folds it
into an int8 constant when the session loads. Forward and backward read the same int8
values, so the backward is the exact transpose of the forward's weight. The vocabulary
(`Int8Weights.product`) and the forward half are in `rewrites.int8_compute`; a
checkpointed layer's recomputed x·W is a forward value and is rewritten there.
"""

import onnx

from edgetune.builder.rewrites.int8_compute import rewrite_products


def int8_backward(model: onnx.ModelProto) -> int:
    """Rewrite the gradient nodes' products with an int8 weight (dY·Wᵀ) as one-pass int8 GEMMs; count them."""
    return rewrite_products(model, gradients=True)
