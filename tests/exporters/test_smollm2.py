"""The real model: SmolLM2-135M-Instruct with a LoRA adapter trained on the dates task, exported to each runtime.

The adapter is trained here for 30 steps (q/v, r=8): enough to turn the base model's
wrong answers into ISO dates, so the tokens compared are ones the adapter decides.
llama.cpp runs the embedded Q4_1 GGUF (the bundle holds its dequantized float32 weights),
so its logits differ slightly; greedy tokens agree over the compared prompts.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgetune.common.embedded import smollm2_gguf
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import load_adapter
from edgetune.exporters import export
from edgetune.options import TrainConfig
from edgetune.runtime.generate import Generator
from edgetune.runtime.train import train
from edgetune.tasks import dates
from tests.exporters.test_genai import genai_tokens
from tests.exporters.test_gguf_lora import llama_cpp
from tests.exporters.test_onnx_adapter import ort_latest_logits

pytestmark = pytest.mark.slow
PROMPTS = 4
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def trained(smollm2_bundle, tmp_path_factory):
    """(bundle, adapter folder, held-out prompts) after 30 steps of LoRA training on the dates task."""
    root = tmp_path_factory.mktemp("smollm2_export")
    paths = dates.write_splits(root / "data", 400, PROMPTS, seed=0)
    config = TrainConfig(
        bundle=smollm2_bundle, data=paths["train"], out=root / "run", steps=30, lr=2e-3, seq_len=64, progress=False
    )
    train(config)
    prompts = [json.loads(line)["prompt"] for line in Path(paths["heldout"]).read_text().splitlines()]
    return smollm2_bundle, root / "run" / "adapter", prompts


@pytest.fixture(scope="module")
def edgetune_tokens(trained):
    """edgetune's greedy tokens per held-out prompt: (prompt ids, base, adapted)."""
    bundle, adapter, prompts = trained
    generator = Generator(bundle)
    rows = []
    for prompt in prompts:
        ids = generator.encode(prompt)
        generator.set_adapter(None)
        base = generator.generate_ids(ids, NEW_TOKENS)
        generator.set_adapter(adapter)
        rows.append((ids, base, generator.generate_ids(ids, NEW_TOKENS)))
    assert sum(base != adapted for _, base, adapted in rows) >= PROMPTS // 2, "training should change the answers"
    return rows


def _until_eos(tokens: list[int], ours: list[int]) -> list[int]:
    """`tokens` cut to the length of ours (edgetune stops after an EOS; the peers' scripts do not)."""
    return tokens[: len(ours)]


def test_llama_cpp_with_the_gguf_lora_decodes_like_edgetune(trained, edgetune_tokens, tmp_path):
    bundle, adapter, _ = trained
    export(bundle, adapter, "gguf", tmp_path / "dates.gguf")
    for ids, _, adapted in edgetune_tokens:
        assert _until_eos(llama_cpp(smollm2_gguf(), ids, tmp_path / "dates.gguf")["tokens"], adapted) == adapted


def test_genai_with_og_adapters_decodes_like_edgetune(trained, edgetune_tokens, tmp_path):
    bundle, adapter, prompts = trained
    export(bundle, adapter, "genai", tmp_path / "genai")
    file = tmp_path / "genai" / "adapters" / "adapter.onnx_adapter"
    for (ids, base, adapted), prompt in zip(edgetune_tokens, prompts):
        got = genai_tokens(tmp_path / "genai", ids, file, text=prompt)
        assert got["base"] == got["base_again"] == base and got["adapted"] == adapted
        assert got["text_ids"] == ids  # genai's own tokenizer reads the folder's tokenizer.json as edgetune does


def test_latest_onnxruntime_with_the_onnx_adapter_matches_peft(trained, tmp_path):
    """ORT 1.31 + LoraAdapter against transformers + PEFT: within 1e-4 beyond the two runtimes' own difference.

    With no adapter at all, their fp32 logits (30 layers, logits up to ~40) already differ
    by 1.1e-4 to 1.6e-4 here; the adapter must add no more than 1e-4 to that.
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    bundle, adapter, prompts = trained
    export(bundle, None, "genai", tmp_path / "serving")
    export(bundle, adapter, "onnx-adapter", tmp_path / "dates.onnx_adapter")
    ids = np.array([Generator(bundle).encode(prompts[0])], np.int64)  # (1, S)
    got = ort_latest_logits(tmp_path / "serving" / "model.onnx", tmp_path / "dates.onnx_adapter", ids, tmp_path)
    weights, config = load_adapter(adapter, read_manifest(bundle))
    gguf = smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    lora = LoraConfig(r=config["r"], lora_alpha=config["lora_alpha"], target_modules=config["target_modules"])
    peft = get_peft_model(model, lora)
    result = set_peft_model_state_dict(peft, {k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    assert not result.unexpected_keys
    with torch.no_grad():
        ref = peft.eval()(torch.from_numpy(ids)).logits.numpy()
        with peft.disable_adapter():
            ref_base = peft(torch.from_numpy(ids)).logits.numpy()
    floor = np.abs(got["base"] - ref_base).max()
    assert floor < 5e-4, f"the base models differ by {floor}"
    np.testing.assert_allclose(got["adapted"], ref, atol=floor + 1e-4, rtol=0)
    assert np.abs(ref - ref_base).max() > 1.0, "the trained adapter should move the logits"
