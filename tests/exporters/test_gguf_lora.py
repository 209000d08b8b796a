"""GGUF LoRA export: the file llama.cpp's converter writes, and llama.cpp's own tokens with it."""

import json
import math
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgetune.common.errors import AdapterError, EdgetuneError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import config_scaling, lora_keys
from edgetune.exporters import export
from edgetune.exporters.gguf_lora import gguf_tensors, permute_rows
from edgetune.exporters.source import ExportSource, load_source
from edgetune.runtime.generate import Generator
from tests.exporters.conftest import NEW_TOKENS, PROMPT_IDS, write_random_adapter
from tests.peers import llama_src, peer_run
from tests.tiny_models import ARCHS

ROOT = Path(__file__).resolve().parents[2]


def _fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def test_file_has_llama_cpp_metadata_permuted_q_k_and_rslora_folded(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama", use_rslora=True, rank=4)
    weights = write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "gguf", tmp_path / "a.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    fields = _fields(reader)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama"
    # llama.cpp scales by alpha/r: rsLoRA's alpha/sqrt(r) is written as alpha*sqrt(r)
    assert fields["adapter.lora.alpha"] / 4 == pytest.approx(16 / math.sqrt(4))
    tensors = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    assert len(tensors) == 2 * len(read_manifest(bundle)["adapted_modules"])
    heads, kv_heads = 4, 2  # tests/tiny_models.py
    for path, name, heads_of in [
        ("model.layers.1.self_attn.q_proj", "blk.1.attn_q", heads),
        ("model.layers.1.self_attn.k_proj", "blk.1.attn_k", kv_heads),
        ("model.layers.1.self_attn.v_proj", "blk.1.attn_v", None),
        ("model.layers.0.mlp.down_proj", "blk.0.ffn_down", None),
    ]:
        key_a, key_b = lora_keys(path)
        b = weights[key_b] if heads_of is None else permute_rows(weights[key_b], heads_of)
        np.testing.assert_array_equal(tensors[f"{name}.weight.lora_a"], weights[key_a])  # (r, in)
        np.testing.assert_array_equal(tensors[f"{name}.weight.lora_b"], b)  # (out, r)
        assert heads_of is None or not np.array_equal(b, weights[key_b])


def test_permute_rows_is_llama_cpp_rotary_order():
    # per head: HF keeps the rotary halves [x0..x3 | y0..y3]; llama.cpp interleaves pairs (x0, y0, x1, y1, ...)
    rows = np.arange(16, dtype=np.float32)[:, None]  # 2 heads of 8 rows, rank 1
    got = permute_rows(rows, 2)[:, 0]
    assert got[:8].tolist() == [0, 4, 1, 5, 2, 6, 3, 7] and got[8:].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]


def test_refusals_name_the_reason(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    with pytest.raises(EdgetuneError, match="--format gguf writes an adapter: give --adapter"):
        export(bundle, None, "gguf", tmp_path / "a.gguf")
    dora = tiny_bundle("llama", method="dora")
    write_random_adapter(dora, tmp_path / "dora")
    with pytest.raises(AdapterError, match=r"DoRA adapter cannot be written as GGUF LoRA: llama\.cpp has no magnitude"):
        export(dora, tmp_path / "dora", "gguf", tmp_path / "d.gguf")
    assert not (tmp_path / "d.gguf").exists() and not (tmp_path / "a.gguf").exists()

    write_random_adapter(bundle, tmp_path / "adapter")
    source = load_source(bundle, tmp_path / "adapter")
    odd = ExportSource(source.bundle, {**source.manifest, "architecture": "bert"}, source.hf_config, source.adapter)
    with pytest.raises(EdgetuneError, match="no GGUF LoRA mapping for architecture 'bert'"):
        gguf_tensors(odd)
    rotary = "model.layers.0.self_attn.rotary_emb"
    odd = ExportSource(
        source.bundle, {**source.manifest, "adapted_modules": [rotary]}, source.hf_config, source.adapter
    )
    with pytest.raises(AdapterError, match=f"{rotary} has no tensor in llama.cpp's llama architecture"):
        gguf_tensors(odd)


@pytest.mark.slow
def test_same_tensors_as_llama_cpps_convert_lora_to_gguf(tiny_bundle, tiny_model_dir, tmp_path):
    """Without rsLoRA, on the llama family (q/k permuted), llama.cpp's own converter writes the same file contents."""
    bundle = tiny_bundle("llama")
    write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "gguf", tmp_path / "ours.gguf")
    src = llama_src()
    script = src / "convert_lora_to_gguf.py"
    cmd = [sys.executable, script, tmp_path / "adapter", "--base", tiny_model_dir("llama")]
    subprocess.run([*map(str, cmd), "--outfile", str(tmp_path / "theirs.gguf")], check=True, capture_output=True)
    ours, theirs = gguf.GGUFReader(str(tmp_path / "ours.gguf")), gguf.GGUFReader(str(tmp_path / "theirs.gguf"))
    keys = ("general.type", "general.architecture", "adapter.type", "adapter.lora.alpha")
    assert {k: _fields(ours)[k] for k in keys} == {k: _fields(theirs)[k] for k in keys}
    ours, theirs = ({t.name: t for t in reader.tensors} for reader in (ours, theirs))
    assert sorted(ours) == sorted(theirs)
    for name, tensor in ours.items():
        assert tensor.tensor_type == theirs[name].tensor_type == gguf.GGMLQuantizationType.F32
        assert list(tensor.shape) == list(theirs[name].shape)
        np.testing.assert_array_equal(np.array(tensor.data), np.array(theirs[name].data), err_msg=name)


def llama_cpp(base: Path, ids: list[int], lora: Path | None = None, tokens: int = NEW_TOKENS) -> dict:
    """llama.cpp's greedy tokens and last-prompt logits (scripts/peer_checks/llama_lora.py)."""
    args = [ROOT / "scripts/peer_checks/llama_lora.py", base, "--ids", ",".join(map(str, ids)), "--tokens", tokens]
    return json.loads(peer_run("llama", args + (["--lora", lora] if lora else [])).stdout)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_decodes_like_edgetune_with_the_adapter(arch, tiny_bundle, base_gguf, tmp_path):
    """llama.cpp on llama.cpp's own conversion of the base, with our GGUF LoRA: edgetune's tokens and logits."""
    lora = {"use_rslora": True, "rank": 4} if arch == "llama" else {}  # rsLoRA's fold, on a real runtime
    bundle = tiny_bundle(arch, **lora)
    write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "gguf", tmp_path / "a.gguf")
    generator = Generator(bundle, adapter=tmp_path / "adapter")
    ours = generator.generate_ids(PROMPT_IDS, NEW_TOKENS)
    logits, _ = generator._step(np.array([PROMPT_IDS]), 0, generator._empty_past, generator._adapter)  # (V,)
    theirs = llama_cpp(base_gguf(arch), PROMPT_IDS, tmp_path / "a.gguf")
    assert theirs["tokens"] == ours
    np.testing.assert_allclose(theirs["logits"], logits, atol=1e-3, rtol=0)
    generator.set_adapter(None)
    assert generator.generate_ids(PROMPT_IDS, NEW_TOKENS) != ours, "the adapter should change the tokens"
    assert config_scaling(read_manifest(bundle)["adapter_config"]) > 0
