"""int8 compute: every frozen Linear trains as int8 GEMMs (x·W forward, dY·Wᵀ backward); LoRA, norms, loss fp32.

Gradient tolerance. The reference is PEFT in fp32 (which the fp32 bundles match to ~1e-6,
tests/builder/test_lora_parity.py). Two roundings separate int8 compute from it: the
weights' (int8 per output channel) and the activations' and gradients' (per row, each
step). Measured on the tiny models (one step, random adapter, batch 2 × 12): loss within
3e-5 relative, every adapter gradient within 2.8% of its largest element and at cosine
≥ 0.9998 to fp32's. The tests allow 5% and 0.999. Why that suffices: PyTorch's bf16
autocast, the setting int8 compute is measured against, is ten times further from fp32 on
the same step (up to 21% and cosine 0.992 on llama), and `test_int8_gradients_are_closer_
to_fp32_than_bf16_autocast` checks that on every architecture. On a real model the
activations' rounding matters more (SmolLM2 has outlier channels): docs/design.md, "int8 compute".
"""

import numpy as np
import onnx
import pytest
import torch

from edgetune.builder.pipeline import build_bundle
from edgetune.common import names
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.options import BuildConfig
from tests.builder.peft_ref import peft_reference
from tests.parity import ort_training, random_adapter
from tests.tiny_models import ARCHS

LAYERS = 2  # every tiny model
LINEARS = {"llama": 7, "qwen2": 7, "mistral": 7, "phi3": 4, "gpt2": 4}  # frozen Linears per layer, LM head aside
FIRST_LAYER_INPUT_GRADIENTS = {"llama": 4, "qwen2": 4, "mistral": 4, "phi3": 3, "gpt2": 3}  # all but q/k/v's
MAX_RELATIVE, MIN_COSINE = 0.05, 0.999


def _batch():
    rng = np.random.default_rng(3)
    ids = rng.integers(3, 100, (2, 12)).astype(np.int64)
    labels = np.roll(ids, -1, axis=1)
    labels[:, :6] = -100
    return ids, labels


def _ort_step(bundle, adapter) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and adapter gradients (PEFT keys and layout) of one step of the bundle's training graph."""
    from edgetune.common.peft import bundle_adapter_keys, to_peft_layout

    state, module, _ = ort_training(bundle, adapter)
    ids, labels = _batch()
    loss = float(module(ids, np.ones_like(ids), np.tile(np.arange(ids.shape[1]), (2, 1)), labels))
    keys = bundle_adapter_keys(read_manifest(bundle))
    return loss, to_peft_layout({k: state.parameters[k].grad.copy() for k in keys})


def _peft_step(model_dir, bundle, adapter, bf16: bool) -> tuple[float, dict[str, np.ndarray]]:
    """The same step in PEFT, fp32 or under bf16 autocast."""
    peft = peft_reference(model_dir, read_manifest(bundle)["adapter_config"], adapter)  # eval: GPT-2's dropout off
    ids, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = peft(torch.from_numpy(ids)).logits
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), torch.from_numpy(labels).reshape(-1)
    )
    loss.backward()
    grads = {
        n.replace(".default.weight", ".weight"): p.grad.numpy()
        for n, p in peft.named_parameters()
        if p.grad is not None
    }
    return loss.item(), grads


def _distance(grads: dict, reference: dict) -> tuple[float, float]:
    """(largest |Δ| relative to each tensor's largest element, smallest cosine) over the adapter's tensors."""
    assert grads.keys() == reference.keys()
    relative = max(np.abs(grads[k] - reference[k]).max() / np.abs(reference[k]).max() for k in reference)
    cosine = min(
        float((grads[k] * reference[k]).sum() / np.linalg.norm(grads[k]) / np.linalg.norm(reference[k]))
        for k in reference
    )
    return relative, cosine


def _int8_gemms(graph: onnx.GraphProto) -> tuple[int, int]:
    """(forward, gradient) products run as int8 GEMMs: a forward one is two MatMulIntegerToFloat (value, residual)."""
    gemms = [n.name for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    gradient = sum(1 for name in gemms if "_Grad/" in name)
    residual = sum(1 for name in gemms if name.endswith("/int8_1"))
    assert len(gemms) - gradient == 2 * residual
    return residual, gradient


@pytest.mark.parametrize("arch", ARCHS)
def test_every_frozen_linear_is_an_int8_gemm_forward_and_backward(arch, method_bundle):
    graph = onnx.load(
        method_bundle(arch, "lora", compute="int8") / names.TRAINING_MODEL, load_external_data=False
    ).graph
    fp32 = onnx.load(method_bundle(arch, "lora") / names.TRAINING_MODEL, load_external_data=False).graph
    forward = LAYERS * LINEARS[arch]
    gradients = forward - (LINEARS[arch] - FIRST_LAYER_INPUT_GRADIENTS[arch])  # none into layer 0's input
    assert _int8_gemms(graph) == (forward, gradients)
    assert "DequantizeLinear" not in {n.op_type for n in graph.node if not n.name.startswith("/int8/")}
    lora = lambda g: sorted(n.name for n in g.node if n.name.startswith("/lora/") and "MatMul" in n.op_type)
    assert lora(graph) == lora(fp32)  # LoRA's own products stay fp32


def test_qlora_int8_keeps_its_lm_head_chunks_float_and_recomputes_layers_in_int8(method_bundle):
    graph = onnx.load(
        method_bundle("llama", "qlora", quant="int8", compute="int8") / names.TRAINING_MODEL, load_external_data=False
    ).graph
    forward, gradients = _int8_gemms(graph)
    recomputed = sum(1 for n in graph.node if n.op_type == "MatMulIntegerToFloat" and "/checkpointed/int8_1" in n.name)
    assert recomputed > 0 and forward == LAYERS * LINEARS["llama"] + recomputed  # QLoRA checkpoints layers
    assert gradients == LAYERS * LINEARS["llama"] - 3
    weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and not n.name.startswith("/int8/")}
    assert weights and all(name.startswith("/quant/lm_head/vocab") for name in weights)  # only the LM head's chunks


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_gradients_are_close_to_fp32_and_closer_than_bf16_autocast(arch, method_bundle, tiny_model_dir):
    bundle = method_bundle(arch, "lora", compute="int8")
    adapter = random_adapter(bundle)
    loss, grads = _ort_step(bundle, adapter)
    loss_fp32, grads_fp32 = _peft_step(tiny_model_dir(arch), bundle, adapter, bf16=False)
    _, grads_bf16 = _peft_step(tiny_model_dir(arch), bundle, adapter, bf16=True)
    assert loss == pytest.approx(loss_fp32, rel=1e-3)
    relative, cosine = _distance(grads, grads_fp32)
    assert relative < MAX_RELATIVE and cosine > MIN_COSINE, (relative, cosine)
    relative_bf16, cosine_bf16 = _distance(grads_bf16, grads_fp32)
    assert relative < relative_bf16 and cosine > cosine_bf16, (relative, relative_bf16, cosine, cosine_bf16)


def test_qlora_int8_compute_differs_from_its_fp32_compute_only_by_the_activations(method_bundle):
    """Same int8 weights on both sides: what is left is the per-row rounding of activations and gradients."""
    fp32 = method_bundle("llama", "qlora", quant="int8")
    int8 = method_bundle("llama", "qlora", quant="int8", compute="int8")
    adapter = random_adapter(fp32)
    loss, grads = _ort_step(int8, adapter)
    loss_fp32, grads_fp32 = _ort_step(fp32, adapter)
    assert loss == pytest.approx(loss_fp32, rel=1e-4)
    relative, cosine = _distance(grads, grads_fp32)
    assert relative < 0.02 and cosine > 0.9999, (relative, cosine)


def test_checkpointing_recomputes_the_same_int8_products(method_bundle):
    plain = method_bundle("llama", "lora", compute="int8")
    checkpointed = method_bundle("llama", "lora", compute="int8", gradient_checkpointing=True)
    adapter = random_adapter(plain)
    loss, grads = _ort_step(plain, adapter)
    loss_ckpt, grads_ckpt = _ort_step(checkpointed, adapter)
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    for key in grads:
        np.testing.assert_allclose(grads_ckpt[key], grads[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_ort_folds_the_transposed_weights_when_the_session_opens(method_bundle, tmp_path):
    """dY·Wᵀ reads Transpose(q): an int8 constant after loading, not a transposition per step."""
    from edgetune.runtime.ort_training import CheckpointState, Module, training_session_options

    bundle = method_bundle("llama", "lora", compute="int8")
    options = training_session_options()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    Module(
        str(bundle / names.TRAINING_MODEL),
        CheckpointState.load_checkpoint(str(bundle / names.CHECKPOINT)),
        None,
        session_options=options,
    )
    graph = onnx.load(tmp_path / "optimized.onnx", load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    gemms = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert gemms and all(n.input[1] in constants for n in gemms)
    assert not [n.name for n in graph.node if n.op_type == "Transpose" and n.input[0].startswith("/quant/")]


def test_the_manifest_says_int8_compute(method_bundle):
    manifest = read_manifest(method_bundle("llama", "lora", compute="int8"))
    assert manifest["compute"]["type"] == "int8" and manifest["quantization"] is None
    assert "compute" not in read_manifest(method_bundle("llama", "lora"))  # fp32 bundles are unchanged


def test_an_int8_compute_bundle_serves_and_merges(method_bundle, tmp_path):
    from edgetune.common.peft import config_scaling, save_adapter
    from edgetune.runtime.merge import merge
    from tests.builder.peft_ref import ids
    from tests.parity import inference_logits, prefill_logits

    bundle = method_bundle("llama", "lora", compute="int8")
    manifest = read_manifest(bundle)
    adapter = random_adapter(bundle, seed=7)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    merge(bundle, tmp_path / "adapter", tmp_path / "merged")
    x = ids(seed=8)
    scaling = config_scaling(manifest["adapter_config"])
    served = inference_logits(bundle, x, adapter, scaling)
    np.testing.assert_allclose(prefill_logits(tmp_path / "merged", x), served, atol=1e-4, rtol=0)
    fp32 = inference_logits(method_bundle("llama", "lora"), x, adapter, scaling)
    assert np.abs(served - fp32).max() < 0.02  # the int8 weights' rounding (tests/builder/test_qlora.py)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="dora", compute="int8"), "compute: int8 needs method lora, or qlora with quant int8 (got dora)"),
        (
            dict(method="qlora", quant="int4", compute="int8"),
            "compute: int8 needs method lora, or qlora with quant int8 (got qlora with quant int4)",
        ),
        (dict(compute="int4"), "compute: must be one of fp32, int8, got 'int4'"),
        (dict(base_delta=True, compute="int8"), "compute: int8 is for LoRA and QLoRA-int8 bundles, not base_delta"),
    ],
)
def test_bad_compute_settings_are_one_line_errors(kwargs, message, tiny_model_dir, tmp_path):
    with pytest.raises(EdgetuneError) as err:
        build_bundle(BuildConfig(str(tiny_model_dir("llama")), tmp_path / "b", **kwargs))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "machine, flags, exact",
    [
        ("x86_64", {"avx2", "avx512f"}, True),  # MLAS's u8·s8 kernels would saturate: run u8·u8
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
        ("x86_64", {"avx2", "avx_vnni"}, False),
        ("x86_64", {"avx2", "amx_int8", "avx512_vnni"}, False),
        ("AMD64", None, True),  # features unknown: be exact
        ("aarch64", {"asimddp"}, False),
    ],
)
def test_x86_without_vnni_trains_with_exact_int8_products(machine, flags, exact):
    from edgetune.runtime.ort_training import exact_int8_needs_u8u8

    assert exact_int8_needs_u8u8(machine, flags) is exact


@pytest.mark.parametrize("residual, transposed, bias", [(True, False, True), (False, True, False), (True, True, True)])
def test_one_int8_product_matches_float64(residual, transposed, bias):
    """x·W (+ C) and dY·Wᵀ over a random int8 weight, with an outlier channel in x and a nonzero bias.

    Two passes leave the weight's rounding only (the reference uses the int8 weight). One
    pass adds the rows' rounding: the outlier sets the row's scale, so the other channels
    keep about 3 levels each and the output is within 5% of its largest element (2.1% here);
    that is why forward values take two passes (gradients, one).
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgetune.builder.rewrites.int8_compute import Int8Weights
    from edgetune.builder.rewrites.quant.formats import quantize_int8

    rng = np.random.default_rng(0)
    k, n = 48, 80
    int8 = quantize_int8((rng.standard_normal((k, n)) * 0.05).astype(np.float32))
    w = int8["q"].astype(np.float64) * int8["scale"]  # (k, n)
    x = rng.standard_normal((2, 5, n if transposed else k)).astype(np.float32)
    x[..., 3] *= 40  # an outlier channel, as real models have
    c = rng.standard_normal(k if transposed else n).astype(np.float32)
    inits = [numpy_helper.from_array(int8["q"], "q"), numpy_helper.from_array(int8["scale"], "s")]
    inits.append(numpy_helper.from_array(c, "c"))
    dequantize = helper.make_node("DequantizeLinear", ["q", "s"], ["w"], domain="com.microsoft", axis=1)
    inputs = ["x", "w"] + (["c"] if bias else [])
    product = helper.make_node("Gemm" if bias else "MatMul", inputs, ["y"], transB=int(transposed))
    if not bias:
        product = helper.make_node("FusedMatMul", inputs, ["y"], domain="com.microsoft", transB=int(transposed))
    if bias:
        x = x.reshape(-1, x.shape[-1])  # Gemm is 2-D
    graph = helper.make_graph([dequantize, product], "g", [], [], inits)
    weights = Int8Weights(graph, residual=residual)
    assert weights.reads(product)
    nodes: list = []
    weights.product(nodes, product)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        list(graph.initializer),
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = x.astype(np.float64) @ (w.T if transposed else w) + (c if bias else 0)
    error = np.abs(y - expected).max() / np.abs(expected).max()
    assert error < (5e-4 if residual else 5e-2), error
