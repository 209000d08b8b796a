"""QLoRA bundles: int8/int4 base weights of the adapted layers, LoRA on top in fp32.

Tolerances measured on the tiny models (logits std ≈ 0.16, all-linear targets, batch 4 x 32):
int8 max |Δlogit| ≤ 0.0067, mean ≤ 0.0008; int4 (block 32 or 64) max ≤ 0.086, mean ≤ 0.0122.
The tests allow about 3x that.
"""

import numpy as np
import onnx
import pytest
import torch
from parity import checkpoint_adapter, inference_logits
from peft_ref import batch, ids, ort_losses, peft_losses, peft_reference, perturbed_adapter
from transformers import AutoModelForCausalLM

from edgetune.build.bundle import build_bundle
from edgetune.build.quantize import dequantize, quantize_int4, quantize_int8, quantized_tensor_names
from edgetune.common import names
from edgetune.common.adapter_config import scaling
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import read_manifest

TOLERANCE = {"int8": (0.02, 0.003), "int4": (0.25, 0.04)}  # (max, mean) |logit difference|


def _dequantized_base(bundle) -> dict[str, np.ndarray]:
    """HF parameter name -> the float weight the bundle's graphs compute, in HF layout."""
    manifest = read_manifest(bundle)
    graph = onnx.load(bundle / names.INFERENCE_MODEL).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    out = {}
    for path in manifest["adapted_modules"]:
        tensors = {part: inits[name] for part, name in quantized_tensor_names(path).items() if name in inits}
        w = dequantize(tensors)                                                       # (in, out)
        out[f"{path}.weight"] = w if manifest["adapter_config"]["fan_in_fan_out"] else np.ascontiguousarray(w.T)
    return out


@pytest.mark.parametrize("block_size", [32, 64, 128])
def test_quantizers_round_to_the_nearest_level(block_size):
    w = np.random.default_rng(0).standard_normal((256, 48)).astype(np.float32) * 0.02
    int8 = quantize_int8(w)
    assert int8["q"].dtype == np.int8 and int8["scale"].shape == (48,)
    assert np.all(np.abs(dequantize(int8) - w) <= int8["scale"] / 2 + 1e-9)
    int4 = quantize_int4(w, block_size)
    assert int4["q"].dtype == np.uint8 and int4["q"].size == 128 * 48  # two values a byte
    assert int4["scale"].shape == int4["offset"].shape == (256 // block_size, 48)
    err = np.abs(dequantize(int4) - w).reshape(256 // block_size, block_size, 48)
    assert np.all(err <= int4["scale"][:, None] / 2 + 1e-7)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("quant,block_size", [("int8", 32), ("int4", 32), ("int4", 64)])
def test_qlora_logits_stay_close_to_fp32(arch, quant, block_size, method_bundle, tiny_model_dir):
    bundle = method_bundle(arch, "qlora", quant=quant, block_size=block_size)
    x = ids(batch=4, seq=32, seed=5)
    ours = inference_logits(bundle, x, checkpoint_adapter(bundle), scaling(read_manifest(bundle)["adapter_config"]))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()(torch.from_numpy(x)).logits.numpy()
    diff = np.abs(ours - ref)
    max_tol, mean_tol = TOLERANCE[quant]
    assert 0 < diff.max() <= max_tol and diff.mean() <= mean_tol, (diff.max(), diff.mean())


@pytest.mark.parametrize("arch,quant", [("llama", "int8"), ("llama", "int4"), ("gpt2", "int4")])
def test_qlora_training_matches_peft_on_the_dequantized_model(arch, quant, method_bundle, tiny_model_dir):
    """The graph computes exactly the dequantized weights: PEFT on them gives the same steps."""
    bundle = method_bundle(arch, "qlora", quant=quant)
    cfg = read_manifest(bundle)["adapter_config"]
    adapter = perturbed_adapter(bundle, seed=3, scale=0.05)
    x = ids(seed=6)
    peft = peft_reference(tiny_model_dir(arch), cfg, adapter, base_weights=_dequantized_base(bundle))
    with torch.no_grad():
        np.testing.assert_allclose(inference_logits(bundle, x, adapter, scaling(cfg)),
                                   peft(torch.from_numpy(x)).logits.numpy(), atol=1e-4, rtol=0)
    batches = [batch(seed) for seed in range(3)]
    ours, our_grads = ort_losses(bundle, adapter, batches, lr=1e-3)
    ref, ref_grads = peft_losses(peft, batches, lr=1e-3)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    for key, grad in ref_grads.items():
        assert np.abs(our_grads[key] - grad).max() <= 1e-4 * np.abs(grad).max(), key


def test_qlora_bundle_shrinks_and_graphs_share_the_quantized_tensors(method_bundle, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    adapted = sum(m.weight.numel() * 4 for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n != "lm_head")            # fp32 bytes
    lora = (method_bundle("llama", "lora") / names.BASE_WEIGHTS).stat().st_size
    int8 = method_bundle("llama", "qlora", quant="int8")
    int4 = method_bundle("llama", "qlora", quant="int4", block_size=32)
    assert lora - (int8 / names.BASE_WEIGHTS).stat().st_size >= 0.70 * adapted  # 1 byte + scales vs 4 bytes
    assert lora - (int4 / names.BASE_WEIGHTS).stat().st_size >= 0.78 * adapted  # ½ byte + scales, offsets
    for bundle in (int8, int4):
        where = {}
        for graph_file in (names.TRAINING_MODEL, names.EVAL_MODEL, names.INFERENCE_MODEL):
            graph = onnx.load(bundle / graph_file, load_external_data=False).graph
            matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.name.endswith("_proj/MatMul")]
            assert matmuls and all(n.input[1].startswith("/quant/") for n in matmuls)  # no fp32 copy left
            quantized = {t.name: {e.key: e.value for e in t.external_data} for t in graph.initializer
                         if t.name.startswith("/quant/") and t.name.endswith("/q")}
            assert all(e["location"] == names.BASE_WEIGHTS for e in quantized.values())
            where[graph_file] = {k: (e["offset"], e["length"]) for k, e in quantized.items()}
        assert len(where[names.INFERENCE_MODEL]) == 14
        assert where[names.TRAINING_MODEL] == where[names.EVAL_MODEL] == where[names.INFERENCE_MODEL]


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="lora", quant="int8"), "quant=int8 needs method=qlora"),
    (dict(method="qlora"), "method=qlora needs a quant type"),
    (dict(method="qlora", quant="int3"), "unknown quant type 'int3'"),
    (dict(method="qlora", quant="int4", block_size=48), "block size 48 is not supported"),
    (dict(method="qlora", quant="int4", block_size=128), "does not divide the input dimension 64 of model.layers.0"),
    (dict(method="lorax"), "unknown method 'lorax'"),
])
def test_bad_quantization_settings_are_one_line_errors(kwargs, message, tiny_model_dir, tmp_path):
    with pytest.raises(EdgetuneError) as err:
        build_bundle(str(tiny_model_dir("llama")), tmp_path / "b", targets="all-linear", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_qlora_merge_dequantizes_and_folds(method_bundle, tmp_path):
    from parity import prefill_logits

    from edgetune.runtime.adapters import save_adapter
    from edgetune.runtime.merge import MERGED_MODEL, merge

    bundle = method_bundle("llama", "qlora", quant="int4")
    manifest = read_manifest(bundle)
    adapter = perturbed_adapter(bundle, seed=7)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    merge(bundle, tmp_path / "adapter", tmp_path / "merged")
    x = ids(seed=8)
    unmerged = inference_logits(bundle, x, adapter, scaling(manifest["adapter_config"]))
    np.testing.assert_allclose(prefill_logits(tmp_path / "merged", x), unmerged, atol=1e-4, rtol=0)
    graph = onnx.load(tmp_path / "merged" / MERGED_MODEL, load_external_data=False).graph
    assert not any(n.name.startswith(("/quant/", "/lora/")) for n in graph.node)


def test_int4_reproduces_gguf_q4_1_weights_exactly():
    """Q4_1 stores w = d·q + m per block of 32 inputs: the same grid as our int4, so nothing is lost."""
    rng = np.random.default_rng(1)
    d = rng.uniform(1e-3, 1e-2, (4, 1, 24)).astype(np.float32)          # (in/32, 1, out)
    m = rng.uniform(-0.1, 0.0, (4, 1, 24)).astype(np.float32)
    q = rng.integers(0, 16, (4, 32, 24))
    q[:, 0], q[:, 1] = 0, 15                                             # each block spans its grid
    w = (q * d + m).astype(np.float32).reshape(128, 24)                  # (in, out)
    np.testing.assert_allclose(dequantize(quantize_int4(w, 32)), w, rtol=0, atol=1e-7)
