"""PEFT interop: a PEFT-trained LoRA/DoRA adapter starts a bundle, and edgetune adapters load into PEFT."""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from edgetune.builder.pipeline import build_bundle
from edgetune.common.errors import EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.names import ADAPTER_CONFIG
from edgetune.common.peft import config_scaling, save_adapter
from edgetune.options import BuildConfig
from tests.builder.peft_ref import ids, perturbed_adapter
from tests.parity import checkpoint_adapter, inference_logits


def _peft_adapter(model_dir, folder, seed=0, **config):
    """Train-like random PEFT adapter saved with save_pretrained; returns the PEFT model (eval)."""
    torch.manual_seed(seed)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(**config))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if param.requires_grad:
                param.mul_(1 + 0.1 * torch.randn_like(param)) if "magnitude" in name else param.normal_(0, 0.2)
    peft.save_pretrained(folder)
    return peft.eval()


def _logits(peft, x):
    with torch.no_grad():
        return peft(torch.from_numpy(x)).logits.numpy()


@pytest.mark.parametrize(
    "arch,config",
    [
        ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])),
        ("qwen2", dict(r=6, lora_alpha=12, use_rslora=True, target_modules=r".*layers\.1\..*(k_proj|up_proj)")),
        ("gpt2", dict(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True)),
        ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], use_dora=True)),
        ("phi3", dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "down_proj"], use_dora=True)),
    ],
)
def test_imported_peft_adapter_gives_peft_logits(arch, config, tiny_model_dir, tmp_path):
    peft = _peft_adapter(tiny_model_dir(arch), tmp_path / "peft", **config)
    manifest = build_bundle(BuildConfig(str(tiny_model_dir(arch)), tmp_path / "b", init_adapter=tmp_path / "peft"))
    cfg = manifest["adapter_config"]
    wanted = (config["r"], config["lora_alpha"], config.get("use_rslora", False))
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == wanted
    assert manifest["method"] == ("dora" if config.get("use_dora") else "lora")
    expected = sorted(n for n, m in peft.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A)
    assert sorted(p.removeprefix("base_model.model.") for p in expected) == sorted(manifest["adapted_modules"])
    x = ids(seed=3)
    ours = inference_logits(tmp_path / "b", x, checkpoint_adapter(tmp_path / "b"), config_scaling(cfg))
    np.testing.assert_allclose(ours, _logits(peft, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_edgetune_adapter_loads_into_peft(method, method_bundle, tiny_model_dir, tmp_path):
    bundle = method_bundle("llama", method)
    manifest = read_manifest(bundle)
    adapter = perturbed_adapter(bundle, seed=5)
    save_adapter(tmp_path / "adapter", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    peft = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert peft.peft_config["default"].use_dora == (method == "dora")
    x = ids(seed=4)
    ours = inference_logits(bundle, x, adapter, config_scaling(manifest["adapter_config"]))
    np.testing.assert_allclose(ours, _logits(peft, x), atol=1e-4, rtol=0)


def _edit_config(folder, **fields):
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    config.update(fields)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(
    "case,message",
    [
        ("other_arch", "has tensors the bundle has no layer for"),
        ("other_size", "adapter trained on another base model"),
        ("peft_type", "peft_type 'IA3' is not supported"),
        ("layers_to_transform", "layers_to_transform=[0] is not supported"),
        ("pissa", "init_lora_weights='pissa' changes the base weights"),
        ("modules_to_save", "modules_to_save=['lm_head'] is not supported"),
        ("spec_too", "do not pass targets or LoRA settings as well"),
        ("dora_method", "method=dora needs a DoRA adapter"),
    ],
)
def test_unfit_peft_adapters_are_refused_in_one_line(case, message, tiny_model_dir, tmp_path):
    adapter = tmp_path / "peft"
    source = {"other_arch": tiny_model_dir("gpt2")}.get(case, tiny_model_dir("llama"))
    if case == "other_size":
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=320,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "small")
        source = tmp_path / "small"
    targets = {"target_modules": ["q_proj"]}
    if case == "other_arch":
        targets = {"target_modules": ["c_attn"], "fan_in_fan_out": True}
    _peft_adapter(source, adapter, r=4, lora_alpha=8, **targets)
    edits = {
        "peft_type": {"peft_type": "IA3"},
        "layers_to_transform": {"layers_to_transform": [0]},
        "pissa": {"init_lora_weights": "pissa"},
        "modules_to_save": {"modules_to_save": ["lm_head"]},
    }
    if case in edits:
        _edit_config(adapter, **edits[case])
    kwargs = {"spec_too": {"rank": 16}, "dora_method": {"method": "dora"}}.get(case, {})
    if case == "other_arch":
        _edit_config(adapter, target_modules=["q_proj"], fan_in_fan_out=False)  # plausible config, foreign tensors
    with pytest.raises(EdgetuneError) as err:
        build_bundle(BuildConfig(str(tiny_model_dir("llama")), tmp_path / "b", init_adapter=adapter, **kwargs))
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "b").exists()
