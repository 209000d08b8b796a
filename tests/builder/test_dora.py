"""DoRA bundles against PEFT's `use_dora=True`: forward, detached-norm gradients, training, keys, merge."""

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import bundle_adapter_keys, config_scaling, save_adapter
from edgetune.runtime.merge import merge
from tests.builder.peft_ref import batch, ids, ort_losses, peft_losses, peft_reference, perturbed_adapter
from tests.parity import checkpoint_adapter, inference_logits

ARCHS = ["llama", "qwen2", "gpt2"]


def _peft_logits(model_dir, cfg: dict, adapter: dict, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return peft_reference(model_dir, cfg, adapter)(torch.from_numpy(x)).logits.numpy()


@pytest.mark.parametrize("arch", ARCHS)
def test_dora_forward_matches_peft(arch, method_bundle, tiny_model_dir):
    bundle = method_bundle(arch, "dora")
    cfg = read_manifest(bundle)["adapter_config"]
    assert cfg["use_dora"] is True
    adapter = perturbed_adapter(bundle)
    x = ids(seed=1)
    ours = inference_logits(bundle, x, adapter, config_scaling(cfg))
    ref = _peft_logits(tiny_model_dir(arch), cfg, adapter, x)
    base = _peft_logits(tiny_model_dir(arch), cfg, checkpoint_adapter(bundle), x)
    assert np.abs(ref - base).max() > 1e-2  # the adapter really changes the output
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_untrained_dora_and_scaling_zero_give_base_logits(method_bundle, tiny_model_dir):
    bundle = method_bundle("llama", "dora")
    cfg = read_manifest(bundle)["adapter_config"]
    x = ids(seed=2)
    ref = _peft_logits(tiny_model_dir("llama"), cfg, checkpoint_adapter(bundle), x)
    initial = inference_logits(bundle, x, checkpoint_adapter(bundle), config_scaling(cfg))
    off = inference_logits(bundle, x, {k: v * 0 for k, v in perturbed_adapter(bundle).items()}, 0.0)  # m = 0 too
    np.testing.assert_allclose(initial, ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(off, ref, atol=1e-4, rtol=0)


def test_dora_keys_are_peft_keys(method_bundle, tiny_model_dir):
    bundle = method_bundle("llama", "dora")
    manifest = read_manifest(bundle)
    peft = peft_reference(tiny_model_dir("llama"), manifest["adapter_config"], checkpoint_adapter(bundle))
    saved = get_peft_model_state_dict(peft)
    assert sorted(saved) == sorted(bundle_adapter_keys(manifest))
    for key, value in checkpoint_adapter(bundle).items():  # PEFT's own initial m = ‖W‖ per output row
        np.testing.assert_allclose(value, saved[key].numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_dora_training_matches_peft(arch, method_bundle, tiny_model_dir):
    """Ten AdamW steps: the norm is detached in both, so gradients and losses agree."""
    bundle = method_bundle(arch, "dora")
    cfg = read_manifest(bundle)["adapter_config"]
    adapter = perturbed_adapter(bundle, seed=3, scale=0.05)  # B ≠ 0: the norm depends on A and B
    batches = [batch(seed) for seed in range(10)]
    ours, our_grads = ort_losses(bundle, adapter, batches, lr=1e-3)
    ref, ref_grads = peft_losses(peft_reference(tiny_model_dir(arch), cfg, adapter), batches, lr=1e-3)
    np.testing.assert_allclose(ours, ref, rtol=1e-3)
    assert set(our_grads) == set(ref_grads)
    for key, grad in ref_grads.items():
        assert np.abs(our_grads[key] - grad).max() <= 1e-4 * np.abs(grad).max(), key


def test_dora_merge_folds_the_rescaled_weight(method_bundle, tiny_model_dir, tmp_path):
    from tests.parity import prefill_logits

    bundle = method_bundle("llama", "dora")
    manifest = read_manifest(bundle)
    adapter = perturbed_adapter(bundle, seed=7)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    merge(bundle, tmp_path / "adapter", tmp_path / "merged")
    x = ids(seed=4)
    ref = _peft_logits(tiny_model_dir("llama"), manifest["adapter_config"], adapter, x)
    np.testing.assert_allclose(prefill_logits(tmp_path / "merged", x), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_a_quantized_dora_merge_keeps_the_float_merges_logits(quant, method_bundle, tmp_path):
    """merge --quant keeps the adapter as a rank-r product beside W'' = m/‖W + s·Aᵀ·Bᵀ‖ ⊙ W, DoRA's column
    factor folded into both: within the quantized merges' bound (test_merge.py) of the float merge."""
    from tests.parity import prefill_logits

    bundle = method_bundle("llama", "dora")
    manifest = read_manifest(bundle)
    adapter = perturbed_adapter(bundle, seed=7, scale=0.05)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    merge(bundle, tmp_path / "adapter", tmp_path / "merged")
    merge(bundle, tmp_path / "adapter", tmp_path / quant, quant=quant)
    x = ids(seed=4)
    float_logits, quant_logits = prefill_logits(tmp_path / "merged", x), prefill_logits(tmp_path / quant, x)
    assert np.abs(quant_logits - float_logits).max() < (0.05 if quant == "int8" else 0.1)


def test_dora_fold_with_the_low_rank_product_apart_is_the_same_model(method_bundle, tmp_path):
    """fold_adapter(low_rank=True), what quantized merges write: W'' + (x·s·Aᵀ)·Bᵀ'' with DoRA's column
    factor in both gives the float merge's logits (float rounding only; the factor itself is checked
    against PEFT by test_dora_merge_folds_the_rescaled_weight)."""
    import onnx

    from edgetune.common.names import INFERENCE_MODEL
    from edgetune.common.peft import load_adapter
    from edgetune.runtime.merge import MERGED_MODEL, fold_adapter
    from tests.parity import prefill_logits

    bundle = method_bundle("llama", "dora")
    manifest = read_manifest(bundle)
    adapter = perturbed_adapter(bundle, seed=7, scale=0.5)  # a delta that moves the logits far
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    weights, config = load_adapter(tmp_path / "adapter", manifest)
    logits = []
    for low_rank in (False, True):
        model = onnx.load(bundle / INFERENCE_MODEL)
        fold_adapter(model, weights, config, manifest["adapted_modules"], low_rank=low_rank)
        (tmp_path / str(low_rank)).mkdir()
        onnx.save(model, tmp_path / str(low_rank) / MERGED_MODEL)
        logits.append(prefill_logits(tmp_path / str(low_rank), ids(seed=4)))
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5, rtol=0)


def test_dora_with_dropout_trains_and_evaluates_like_peft(method_bundle, tiny_model_dir):
    """With LoRA dropout PEFT recomputes the base from dropout(x); the eval model has no dropout."""
    from tests.parity import ort_training

    bundle = method_bundle("llama", "dora", dropout=0.3)
    cfg = read_manifest(bundle)["adapter_config"]
    adapter = perturbed_adapter(bundle, seed=3, scale=0.05)
    x, labels = batch(seed=0)
    state, module, _ = ort_training(bundle, adapter)
    feeds = (x, np.ones_like(x), np.tile(np.arange(x.shape[1]), (x.shape[0], 1)), labels)
    train_loss = float(module.train()(*feeds))
    assert np.isfinite(train_loss)
    assert all(np.isfinite(state.parameters[k].grad).all() for k in adapter)
    eval_loss = float(module.eval()(*feeds))
    logits = peft_reference(tiny_model_dir("llama"), cfg, adapter)(torch.from_numpy(x)).logits
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(labels).reshape(-1))
    assert eval_loss == pytest.approx(ref.item(), rel=1e-5) and train_loss != pytest.approx(eval_loss, rel=1e-6)
