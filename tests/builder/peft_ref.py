"""Helpers for the DoRA / QLoRA / PEFT-import tests: PEFT references and ORT training runs."""

import numpy as np
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import bundle_adapter_keys, to_peft_layout
from tests.parity import checkpoint_adapter, ort_training, training_step
from tests.tiny_models import VOCAB


def ids(batch=2, seq=12, seed=0) -> np.ndarray:
    """Random token ids (B, S) of the tiny vocabulary."""
    return np.random.default_rng(seed).integers(3, VOCAB, (batch, seq)).astype(np.int64)


def batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, labels) with shifted labels, the last and some prompt positions ignored."""
    x = ids(batch=3, seq=10, seed=seed)
    labels = np.roll(x, -1, axis=1)
    labels[:, -1] = -100
    labels[0, :4] = -100
    return x, labels


def lora_config(cfg: dict) -> LoraConfig:
    """PEFT's LoraConfig from a bundle's adapter_config."""
    return LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg["lora_dropout"],
        target_modules=cfg["target_modules"],
        fan_in_fan_out=cfg["fan_in_fan_out"],
        use_rslora=cfg["use_rslora"],
        use_dora=cfg.get("use_dora", False),
    )


def peft_reference(model_dir, cfg: dict, adapter: dict, base_weights: dict | None = None):
    """transformers + PEFT with `cfg`, `adapter` (PEFT layout) and optionally replaced base weights."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if base_weights:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in base_weights.items():
                params[name].copy_(torch.from_numpy(value))
    peft = get_peft_model(model, lora_config(cfg))
    result = set_peft_model_state_dict(peft, {k: torch.from_numpy(v.copy()) for k, v in adapter.items()})
    assert not result.unexpected_keys, result.unexpected_keys
    return peft.eval()


def perturbed_adapter(bundle, seed: int = 1, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random A and B, and DoRA's m moved ±10% from its initial value, in PEFT layout."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, value in checkpoint_adapter(bundle).items():
        if key.endswith("lora_magnitude_vector"):
            out[key] = (value * (1 + 0.1 * rng.standard_normal(value.shape))).astype(np.float32)
        else:
            out[key] = (rng.standard_normal(value.shape) * scale).astype(np.float32)
    return out


def ort_losses(bundle, adapter: dict, batches: list, lr: float) -> tuple[list[float], dict]:
    """Losses of AdamW/SGD steps on the bundle's training graph, and the first step's gradients."""
    manifest = read_manifest(bundle)
    state, module, opt = ort_training(bundle, adapter, lr)
    losses, grads = [], None
    for x, labels in batches:
        losses.append(float(training_step(module, x, labels)))
        if grads is None:
            grads = to_peft_layout({k: state.parameters[k].grad.copy() for k in bundle_adapter_keys(manifest)})
        opt.step()
        module.lazy_reset_grad()
    return losses, grads


def peft_losses(peft, batches: list, lr: float, optimizer: str = "adamw") -> tuple[list[float], dict]:
    """The same steps in PyTorch: losses and the first step's gradients (saved-key names)."""
    params = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    opt = (
        torch.optim.SGD(params.values(), lr=lr)
        if optimizer == "sgd"
        else torch.optim.AdamW(params.values(), lr=lr, eps=1e-8, weight_decay=0.0)
    )
    losses, grads = [], None
    for x, labels in batches:
        logits = peft(torch.from_numpy(x)).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), torch.from_numpy(labels).reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        if grads is None:
            grads = {_saved_key(n): p.grad.numpy().copy() for n, p in params.items()}
        opt.step()
        losses.append(loss.item())
    return losses, grads


def _saved_key(name: str) -> str:
    """PEFT's in-memory parameter name -> its saved key."""
    return name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector").replace(
        ".default.weight", ".weight"
    )
