"""Residual Add + RMSNorm as SkipSimplifiedLayerNormalization in the serving graph (rewrites/serve/skip_norm.py).

That the serving graph still computes the with-past graph's logits, every family, is
tests/runtime/test_engine.py's `test_serving_graph_equals_the_with_past_graph`.
"""

import json

import onnx
import pytest

from edgetune.common import names


def _ops(bundle, op: str) -> int:
    return sum(n.op_type == op for n in onnx.load(bundle / names.SERVE_MODEL, load_external_data=False).graph.node)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3", "gemma"])
def test_every_residual_add_before_a_norm_is_fused(arch, tiny_bundle):
    """Two per layer (before the MLP's norm and the next layer's or the final norm): only the first norm, on the
    embeddings, is left unfused (Gemma's weight, 1 + w, is a constant of the export)."""
    bundle = tiny_bundle(arch)
    layers = json.loads((bundle / names.HF_CONFIG).read_text())["num_hidden_layers"]
    assert _ops(bundle, "SkipSimplifiedLayerNormalization") == 2 * layers
    assert _ops(bundle, "Pow") == 1


def test_norms_of_a_sublayers_output_stay_plain_norms(tiny_bundle):
    """Gemma 2 also norms each sublayer's output before the residual Add: those read no Add, and stay."""
    bundle = tiny_bundle("gemma2")
    layers = json.loads((bundle / names.HF_CONFIG).read_text())["num_hidden_layers"]
    assert _ops(bundle, "SkipSimplifiedLayerNormalization") == 2 * layers
    assert _ops(bundle, "Pow") == 1 + 2 * layers
