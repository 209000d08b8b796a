"""`edgetune build` / `edgetune inspect`: bundle layout, manifest, hashes and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from edgetune.common import names
from edgetune.common.manifest import read_manifest

REQUIRED = [
    names.TRAINING_MODEL,
    names.EVAL_MODEL,
    names.OPTIMIZER_MODEL,
    names.CHECKPOINT,
    names.INFERENCE_MODEL,
    names.BASE_WEIGHTS,
    names.HF_CONFIG,
    "tokenizer.json",
    "tokenizer_config.json",
    names.MANIFEST,
]


def edgetune(*args, cwd=None):
    """Run the CLI in a fresh process; return (exit code, stdout, stderr)."""
    p = subprocess.run(
        [sys.executable, "-m", "edgetune.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    return p.returncode, p.stdout, p.stderr


def test_bundle_has_every_file_and_a_complete_manifest(tiny_bundle):
    bundle = tiny_bundle("llama")
    for name in REQUIRED:
        assert (bundle / name).exists(), name
    manifest = read_manifest(bundle)
    assert set(manifest["files"]) == {p.name for p in bundle.iterdir()} - {names.MANIFEST}
    assert manifest["architecture"] == "llama" and manifest["task"] == "causal-lm"
    assert manifest["onnxruntime_version"] == "1.19.2" and manifest["onnx"]["ir_version"] <= 10
    assert len(manifest["source"]["weights_sha256"]) == 64
    cfg = manifest["adapter_config"]
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16.0
    assert cfg["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert len(manifest["adapted_modules"]) == 2 * 7  # two layers


def test_base_weights_live_once_and_checkpoint_is_adapter_only(tiny_bundle, tiny_model_dir):
    bundle = tiny_bundle("llama")
    for name in (names.TRAINING_MODEL, names.EVAL_MODEL, names.INFERENCE_MODEL):
        model = onnx.load(bundle / name, load_external_data=False)
        inline = [t.name for t in model.graph.initializer if len(t.raw_data) >= 1024]
        assert inline == [], f"{name} keeps base weights inline: {inline[:3]}"
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")).parameters())
    weights = (bundle / names.BASE_WEIGHTS).stat().st_size
    # fp32 weights once, plus the tied LM head's transposed copy and page alignment
    assert weights < 1.5 * 4 * n_params
    assert (bundle / names.CHECKPOINT).stat().st_size < weights / 5


def test_inspect_prints_and_verifies(tiny_bundle):
    code, out, err = edgetune("inspect", tiny_bundle("llama"))
    assert code == 0, err
    assert json.loads(out)["architecture"] == "llama"
    assert "ok:" in err


@pytest.mark.parametrize("victim", [names.BASE_WEIGHTS, names.CHECKPOINT, names.INFERENCE_MODEL, "tokenizer.json"])
def test_inspect_names_a_flipped_byte(victim, tiny_model_dir, tmp_path):
    bundle = tmp_path / "b"
    code, _, err = edgetune("build", tiny_model_dir("qwen2"), "-o", bundle)
    assert code == 0, err
    path = bundle / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code, _, err = edgetune("inspect", bundle)
    assert code == 1
    assert err.count("\n") == 1 and victim in err and "sha256" in err


def _unknown_arch_model(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = OPTConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    from tests.tiny_models import make_tokenizer

    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["missing", "missing_gguf", "unknown_arch", "bad_targets", "exists"])
def test_bad_input_is_one_line_and_leaves_nothing(case, tiny_model_dir, tmp_path):
    out = tmp_path / "out" / "bundle"
    args = {
        "missing": [tmp_path / "nope", "-o", out],
        "missing_gguf": [tmp_path / "nope.gguf", "-o", out],
        "unknown_arch": [_unknown_arch_model(tmp_path / "opt") if case == "unknown_arch" else None, "-o", out],
        "bad_targets": [tiny_model_dir("llama"), "-o", out, "--targets", "q_proj,nonsense"],
        "exists": [tiny_model_dir("llama"), "-o", tmp_path],
    }[case]
    if case == "exists":
        (tmp_path / "keep.txt").write_text("user data")
    code, _, err = edgetune("build", *args)
    assert code == 1
    assert err.startswith("edgetune: ") and err.count("\n") == 1, err
    expected = {
        "missing": "nope",
        "missing_gguf": "no such GGUF file",
        "unknown_arch": "unsupported architecture 'opt'",
        "bad_targets": "nonsense",
        "exists": "already exists",
    }[case]
    assert expected in err
    if case == "unknown_arch":
        assert "llama" in err and "phi3" in err  # lists what is supported
    if case == "bad_targets":
        assert "q_proj" in err and "all-linear" in err  # lists the names that exist
    if case == "exists":
        assert (tmp_path / "keep.txt").read_text() == "user data"
    else:
        assert not out.exists()
        assert not list((tmp_path / "out").glob(".bundle.*"))  # no half-built temp folder either
