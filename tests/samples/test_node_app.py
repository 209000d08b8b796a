"""samples/node_app: an `edgetune merge` output decoded greedily in Node.js gives edgetune's tokens."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edgetune.runtime.generate import Generator
from edgetune.runtime.merge import merge
from tests.serve.conftest import make_adapter

APP = Path(__file__).resolve().parents[2] / "samples" / "node_app"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="needs Node.js >= 20 (scripts/peers.sh node)")


@pytest.fixture(scope="module")
def node_modules():
    """npm install in the sample (onnxruntime-node's CUDA download skipped, as DESIGN notes)."""
    if not (APP / "node_modules" / "onnxruntime-node").is_dir() or not (APP / "node_modules" / "tokenizers").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"],
            cwd=APP,
            check=True,
            timeout=600,
            env={**__import__("os").environ, "ONNXRUNTIME_NODE_INSTALL": "skip"},
        )
    return APP / "node_modules"


def node_generate(model_dir: Path, prompt: str, new: int) -> dict:
    proc = subprocess.run(
        [NODE, str(APP / "generate.mjs"), str(model_dir), prompt, "--new", str(new), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def check_same_tokens(bundle: Path, adapter: Path, merged: Path, prompts: list[str], new: int) -> None:
    generator = Generator(bundle, adapter=adapter)
    for prompt in prompts:
        ours = generator.encode(prompt)
        expected = generator.generate_ids(ours, new, temperature=0)
        got = node_generate(merged, prompt, new)
        assert got["prompt_ids"] == ours, prompt
        assert got["tokens"] == expected, prompt


def test_tiny_merged_model_in_node_equals_edgetune(node_modules, tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    adapter = make_adapter(bundle, tmp_path / "adapter", seed=8)
    merge(bundle, adapter, tmp_path / "merged")
    check_same_tokens(bundle, adapter, tmp_path / "merged", ["the quick brown fox", "march 2021 iso"], 24)


@pytest.mark.slow
def test_smollm2_merged_model_in_node_equals_edgetune(node_modules, smollm2_bundle, tmp_path):
    """The real model: SmolLM2-135M-Instruct with a random adapter, merged and decoded in Node."""
    adapter = make_adapter(smollm2_bundle, tmp_path / "adapter", seed=8)
    merge(smollm2_bundle, adapter, tmp_path / "merged")
    prompts = ["Convert to ISO date: Mar 5th 2021\nISO:", "The capital of France is"]
    check_same_tokens(smollm2_bundle, adapter, tmp_path / "merged", prompts, 16)
