"""Fixtures of the export tests: a bundle with a non-zero adapter, edgetune's own greedy tokens, base GGUFs."""

from pathlib import Path

import numpy as np
import pytest

from edgetune.common.manifest import read_manifest
from edgetune.common.peft import save_adapter
from tests.gguf_base import convert
from tests.parity import random_adapter
from tests.peers import llama_src

PROMPT_IDS = [1, 40, 50, 60, 70, 80, 90]  # token ids of the tiny vocabulary (BOS first)
NEW_TOKENS = 16
_cache: dict = {}


def write_random_adapter(bundle: Path, out: Path, seed: int = 7, scale: float = 0.2) -> dict[str, np.ndarray]:
    """A non-zero PEFT adapter for `bundle` (its config), saved to `out`; returns its weights (PEFT layout)."""
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=seed, scale=scale)
    save_adapter(out, weights, manifest["adapter_config"], manifest["source"]["weights_sha256"])
    return weights


@pytest.fixture(scope="session")
def base_gguf(tmp_path_factory, tiny_model_dir):
    """base_gguf(arch) -> the tiny HF model converted to a float32 GGUF by llama.cpp's convert_hf_to_gguf.py."""

    def get(arch: str) -> Path:
        if arch not in _cache:
            out = tmp_path_factory.mktemp(f"gguf_{arch}") / "base.gguf"
            _cache[arch] = convert(llama_src(), tiny_model_dir(arch), out)
        return _cache[arch]

    return get
