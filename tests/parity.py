"""Helpers the parity tests share: run bundle graphs and the PyTorch/PEFT reference."""

import numpy as np
import onnxruntime as ort
import torch
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from transformers import AutoModelForCausalLM

from edgetune.common.manifest import read_manifest
from edgetune.common.names import CHECKPOINT, INFERENCE_MODEL, LORA_SCALING, MERGED_MODEL
from edgetune.common.peft import bundle_adapter_keys, to_graph_layout, to_peft_layout


def checkpoint_adapter(bundle) -> dict[str, np.ndarray]:
    """The bundle's initial adapter, in PEFT layout."""
    from onnxruntime.training.api import CheckpointState

    state = CheckpointState.load_checkpoint(str(bundle / CHECKPOINT))
    keys = bundle_adapter_keys(read_manifest(bundle))
    return to_peft_layout({k: state.parameters[k].data for k in keys})


def random_adapter(bundle, seed: int = 1, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Non-zero A and B of the bundle's shapes, in PEFT layout."""
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(v.shape) * scale).astype(np.float32) for k, v in checkpoint_adapter(bundle).items()}


def inference_logits(bundle, input_ids: np.ndarray, adapter: dict, scaling: float) -> np.ndarray:
    """Logits (B, S, V) of the bundle's inference graph with an empty KV cache."""
    sess = ort.InferenceSession(str(bundle / INFERENCE_MODEL), providers=["CPUExecutionProvider"])
    b, s = input_ids.shape
    feeds = {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "position_ids": np.tile(np.arange(s), (b, 1)),
        LORA_SCALING: np.array(scaling, np.float32),
    }
    feeds.update(to_graph_layout(adapter))
    for inp in sess.get_inputs():
        if inp.name.startswith("past_key_values"):
            feeds[inp.name] = np.zeros((b, inp.shape[1], 0, inp.shape[3]), np.float32)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
    return sess.run(["logits"], feeds)[0]


def peft_model(model_dir, manifest: dict, adapter: dict, **load):
    """transformers + PEFT with the bundle's adapter config and the given weights; `load`: more
    from_pretrained arguments (e.g. gguf_file)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **load)
    cfg = manifest["adapter_config"]
    config = LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg["lora_dropout"],
        target_modules=cfg["target_modules"],
        fan_in_fan_out=cfg["fan_in_fan_out"],
        use_rslora=cfg["use_rslora"],
    )
    peft = get_peft_model(model, config)
    result = set_peft_model_state_dict(peft, {k: torch.from_numpy(v.copy()) for k, v in adapter.items()})
    assert not result.unexpected_keys, result.unexpected_keys
    return peft.eval()


def prefill_logits(model_dir, ids: np.ndarray) -> np.ndarray:
    """Logits (B, S, V) of a merged folder's model.onnx for `ids`, nothing cached."""
    sess = ort.InferenceSession(str(model_dir / MERGED_MODEL), providers=["CPUExecutionProvider"])
    b, s = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.tile(np.arange(s), (b, 1))}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((b, i.shape[1], 0, i.shape[3]), np.float32)
    return sess.run(["logits"], {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})[0]


def training_step(module, ids: np.ndarray, labels: np.ndarray):
    """One call of ORT's training Module on a full batch, inputs fed by name (Gemma's graphs take no position_ids)."""
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "position_ids": np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1)),
        "labels": labels,
    }
    return module(*(feeds[name] for name in module.input_names()))


def ort_training(bundle, adapter: dict, lr: float | None = None):
    """ORT's (state, Module, Optimizer) on the bundle with `adapter` (PEFT layout) loaded, in train mode."""
    from onnxruntime.training.api import CheckpointState, Module, Optimizer

    from edgetune.common.names import EVAL_MODEL, OPTIMIZER_MODEL, TRAINING_MODEL

    state = CheckpointState.load_checkpoint(str(bundle / CHECKPOINT))
    module = Module(str(bundle / TRAINING_MODEL), state, str(bundle / EVAL_MODEL))
    for key, value in to_graph_layout(adapter).items():  # only once a Module owns the state
        state.parameters[key] = value
    optimizer = Optimizer(str(bundle / OPTIMIZER_MODEL), module)
    if lr is not None:
        optimizer.set_learning_rate(lr)
    module.train()
    return state, module, optimizer
