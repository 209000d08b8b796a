"""`train` against a PyTorch + PEFT loop: same adapter, data order and hyper-parameters."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetune.common.manifest import read_manifest
from edgetune.common.names import ADAPTER_WEIGHTS
from edgetune.common.peft import save_adapter
from edgetune.options import TrainConfig
from edgetune.runtime.batching import encode_examples, load_tokenizer, make_batches
from edgetune.runtime.data import read_examples
from edgetune.runtime.metrics import read_metrics
from edgetune.runtime.schedule import learning_rate, warmup_steps
from edgetune.runtime.train import train

sys.path.insert(0, str(Path(__file__).parents[1] / "build"))
from tests.parity import peft_model, random_adapter
from tests.tiny_models import sample_text

STEPS = 20


def reference_losses(
    model_dir, bundle, data, adapter, optimizer, lr, warmup, schedule, batch_size, grad_accum, seq_len, seed
):
    """The recipe's loop in PyTorch: same batches, LR per step, gradient accumulation semantics."""
    manifest = read_manifest(bundle)
    tokenizer, info = load_tokenizer(bundle)
    encoded, _ = encode_examples(read_examples(data)[0], tokenizer, info, seq_len)
    model = peft_model(model_dir, manifest, adapter)  # eval(): no base dropout; LoRA dropout is 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.SGD(params, lr=lr)
        if optimizer == "sgd"
        else torch.optim.AdamW(params, lr=lr, eps=1e-8, weight_decay=0.0)
    )
    steps_per_epoch = math.ceil(math.ceil(len(encoded) / batch_size) / grad_accum)
    warm, losses = warmup_steps(warmup, STEPS), []
    for step in range(STEPS):
        epoch, index = divmod(step, steps_per_epoch)
        micro = make_batches(encoded, batch_size, seed, epoch, info.pad_id)[
            index * grad_accum : (index + 1) * grad_accum
        ]
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, STEPS, lr, warm, schedule)
        step_losses = []
        for b in micro:
            logits = model(
                input_ids=torch.from_numpy(b.input_ids),
                attention_mask=torch.from_numpy(b.attention_mask),
                position_ids=torch.from_numpy(b.position_ids),
            ).logits  # (B, S, V)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), torch.from_numpy(b.labels).flatten(), ignore_index=-100
            )
            # AdamW: gradients summed over micro-batches, as ORT does. SGD: averaged, which
            # is what the recipe's LR / grad_accum gives.
            (loss / len(micro) if optimizer == "sgd" else loss).backward()
            step_losses.append(loss.item())
        opt.step()
        opt.zero_grad()
        losses.append(float(np.mean(step_losses)))
    final = {
        n.replace(".default.weight", ".weight"): p.detach().numpy()
        for n, p in model.named_parameters()
        if p.requires_grad
    }
    return losses, final


@pytest.mark.parametrize(
    "arch, optimizer, lr, schedule, grad_accum",
    [
        ("llama", "adamw", 2e-3, "cosine", 2),
        ("phi3", "adamw", 2e-3, "constant", 1),
        ("llama", "sgd", 0.5, "linear", 2),
    ],
)
def test_first_20_losses_match_pytorch_peft(
    arch, optimizer, lr, schedule, grad_accum, tiny_bundle, tiny_model_dir, tmp_path
):
    bundle = tiny_bundle(arch, optimizer=optimizer)
    manifest = read_manifest(bundle)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_text(40, seed=3)))
    adapter = random_adapter(bundle, seed=5, scale=0.05)  # identical start on both sides, B non-zero
    save_adapter(tmp_path / "init", adapter, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    hp = dict(lr=lr, warmup=0.2, schedule=schedule, batch_size=4, grad_accum=grad_accum, seq_len=32, seed=7)

    train(
        TrainConfig(bundle, data, tmp_path / "run", steps=STEPS, init_adapter=tmp_path / "init", progress=False, **hp)
    )
    ours = [r["loss"] for r in read_metrics(tmp_path / "run") if r["type"] == "train"]
    ref, ref_final = reference_losses(tiny_model_dir(arch), bundle, data, adapter, optimizer, **hp)

    assert ours[-1] < ours[0] - 0.05  # it learned something: the comparison is not between two flat lines
    np.testing.assert_allclose(ours, ref, rtol=1e-3)
    from safetensors.numpy import load_file

    final = load_file(tmp_path / "run" / "adapter" / ADAPTER_WEIGHTS)
    for key, value in ref_final.items():
        assert np.abs(final[key] - value).max() <= 1e-3 * np.abs(value).max(), key
