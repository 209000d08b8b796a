"""The bundle's graphs against transformers and PEFT, on every architecture."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import bundle_adapter_keys, config_scaling, to_peft_layout
from tests.parity import checkpoint_adapter, inference_logits, ort_training, peft_model, random_adapter, training_step
from tests.tiny_models import ALL_ARCHS, VOCAB


def _ids(batch=2, seq=12, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB, (batch, seq)).astype(np.int64)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_untrained_adapter_gives_base_logits(arch, tiny_model_dir, tiny_bundle):
    bundle = tiny_bundle(arch)
    manifest = read_manifest(bundle)
    adapter = checkpoint_adapter(bundle)
    assert all(not v.any() for k, v in adapter.items() if ".lora_B." in k)  # B starts at zero
    ids = _ids()
    ours = inference_logits(bundle, ids, adapter, config_scaling(manifest["adapter_config"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_random_adapter_matches_peft(arch, tiny_model_dir, tiny_bundle):
    bundle = tiny_bundle(arch)
    manifest = read_manifest(bundle)
    adapter = random_adapter(bundle)
    ids = _ids(seed=1)
    ours = inference_logits(bundle, ids, adapter, config_scaling(manifest["adapter_config"]))
    with torch.no_grad():
        ref = peft_model(tiny_model_dir(arch), manifest, adapter)(torch.from_numpy(ids)).logits.numpy()
    base = inference_logits(bundle, ids, {k: v * 0 for k, v in adapter.items()}, 0.0)
    assert np.abs(ref - base).max() > 1e-2  # the adapter really changes the output
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_adapter_keys_are_peft_keys(tiny_model_dir, tiny_bundle):
    manifest = read_manifest(tiny_bundle("llama"))
    peft = peft_model(tiny_model_dir("llama"), manifest, checkpoint_adapter(tiny_bundle("llama")))
    from peft import get_peft_model_state_dict

    assert sorted(get_peft_model_state_dict(peft)) == sorted(bundle_adapter_keys(manifest))


def _batch(seed=2):
    ids = _ids(batch=3, seq=10, seed=seed)
    labels = np.roll(ids, -1, axis=1)
    labels[:, -1] = -100
    labels[0, :4] = -100  # prompt tokens carry no loss
    return ids, labels


NEW_FAMILIES = ("gemma", "gemma2", "gemma3_text", "qwen3", "granite", "olmo", "stablelm")
STEPS = [(a, o) for a in ("llama", "phi3", "gpt2") for o in ("sgd", "adamw")] + [(a, "adamw") for a in NEW_FAMILIES]


@pytest.mark.parametrize(("arch", "optimizer"), STEPS)
def test_one_training_step_matches_peft(arch, optimizer, tiny_model_dir, tiny_bundle):
    bundle = tiny_bundle(arch, optimizer=optimizer)
    manifest = read_manifest(bundle)
    adapter = random_adapter(bundle, seed=3, scale=0.05)
    ids, labels = _batch()
    lr = 1e-3  # the learning rate LoRA runs use

    state, module, opt = ort_training(bundle, adapter, lr)
    loss = training_step(module, ids, labels)
    grads = to_peft_layout({k: state.parameters[k].grad for k in bundle_adapter_keys(manifest)})
    opt.step()
    ours = to_peft_layout({k: state.parameters[k].data for k in bundle_adapter_keys(manifest)})

    peft = peft_model(tiny_model_dir(arch), manifest, adapter)  # eval(): no base dropout, grads still flow
    params = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    torch_opt = (
        torch.optim.SGD(params.values(), lr=lr)
        if optimizer == "sgd"
        else torch.optim.AdamW(params.values(), lr=lr, eps=1e-8, weight_decay=0.0)
    )
    logits = peft(torch.from_numpy(ids)).logits
    ref_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), torch.from_numpy(labels).reshape(-1)
    )
    ref_loss.backward()
    torch_opt.step()

    np.testing.assert_allclose(float(loss), ref_loss.item(), rtol=1e-4)
    for name, param in params.items():
        key = name.replace(".default.weight", ".weight")
        grad = param.grad.numpy()
        assert np.abs(grads[key] - grad).max() <= 1e-4 * np.abs(grad).max(), key
        before, ref = adapter[key], param.detach().numpy()
        assert np.abs(ref - before).max() > 0  # the step moved it
        # Relative to the tensor's scale: AdamW's first step is ~lr·sign(g), so elements whose
        # gradient is near eps may differ by float rounding alone.
        assert np.abs(ours[key] - ref).max() <= 1e-4 * np.abs(ref).max(), key
