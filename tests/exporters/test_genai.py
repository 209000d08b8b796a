"""onnxruntime-genai folders: genai_config.json from the HF config, and genai's greedy tokens equal edgetune's."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgetune.common.bundle import open_bundle
from edgetune.common.errors import AdapterError
from edgetune.common.manifest import read_manifest
from edgetune.common.peft import delta_key, lora_keys, save_adapter
from edgetune.exporters import export
from edgetune.exporters.genai import GENAI_CONFIG, genai_config
from edgetune.runtime.generate import Generator
from edgetune.runtime.merge import merge
from tests.exporters.conftest import NEW_TOKENS, PROMPT_IDS, write_random_adapter
from tests.parity import prefill_logits, random_adapter
from tests.peers import peer_run
from tests.tiny_models import ARCHS

ROOT = Path(__file__).resolve().parents[2]


def test_genai_config_from_the_hf_config():
    llama = {
        "model_type": "llama",
        "hidden_size": 576,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "num_hidden_layers": 30,
        "max_position_embeddings": 8192,
        "vocab_size": 49152,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    config = genai_config(llama, {"eos_token_id": [2, 7], "do_sample": True, "temperature": 0.2, "top_p": 0.9})
    model, decoder = config["model"], config["model"]["decoder"]
    assert model["type"] == "llama" and model["context_length"] == 8192 and model["eos_token_id"] == [2, 7]
    assert model["pad_token_id"] == 2  # no pad token: the first EOS, as genai expects one
    assert (decoder["head_size"], decoder["num_attention_heads"], decoder["num_key_value_heads"]) == (64, 9, 3)
    assert decoder["num_hidden_layers"] == 30 and decoder["inputs"]["past_key_names"] == "past_key_values.%d.key"
    search = config["search"]
    assert search["do_sample"] and search["temperature"] == 0.2 and search["top_p"] == 0.9
    assert search["max_length"] == 8192 and search["past_present_share_buffer"] is False
    gpt2 = {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 256, "vocab_size": 320}
    config = genai_config(gpt2, {})
    assert config["model"]["type"] == "decoder" and config["model"]["decoder"]["num_key_value_heads"] == 4
    assert config["search"]["do_sample"] is False and config["search"]["top_k"] == 1
    with pytest.raises(Exception, match="onnxruntime-genai has no model type for 'bert'"):
        genai_config({**llama, "model_type": "bert"}, {})


def test_folder_has_config_tokenizer_adapter_and_a_manifest(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "genai", tmp_path / "genai")
    manifest = open_bundle(tmp_path / "genai").manifest
    assert manifest["kind"] == "genai" and manifest["adapter"]["file"] == "adapters/adapter.onnx_adapter"
    for name in (GENAI_CONFIG, "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json"):
        assert name in manifest["files"], name
    config = json.loads((tmp_path / "genai" / GENAI_CONFIG).read_text())
    assert config["model"]["decoder"]["filename"] == "model.onnx"


def genai_tokens(folder: Path, ids: list[int], adapter: Path | None = None, text: str | None = None) -> dict:
    """genai's greedy tokens without and with the adapter (scripts/peer_checks/genai_adapter.py)."""
    args = [ROOT / "scripts/peer_checks/genai_adapter.py", folder, "--ids", ",".join(map(str, ids))]
    args += ["--tokens", NEW_TOKENS, *(["--adapter", adapter] if adapter else []), *(["--text", text] if text else [])]
    return json.loads(peer_run("genai", args).stdout)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_genai_decodes_like_edgetune_with_og_adapters(arch, tiny_bundle, tmp_path):
    bundle = tiny_bundle(arch)
    write_random_adapter(bundle, tmp_path / "adapter")
    export(bundle, tmp_path / "adapter", "genai", tmp_path / "genai")
    generator = Generator(bundle)
    base = generator.generate_ids(PROMPT_IDS, NEW_TOKENS)
    generator.set_adapter(tmp_path / "adapter")
    adapted = generator.generate_ids(PROMPT_IDS, NEW_TOKENS)
    got = genai_tokens(tmp_path / "genai", PROMPT_IDS, tmp_path / "genai/adapters/adapter.onnx_adapter")
    assert got["base"] == got["base_again"] == base and got["adapted"] == adapted
    assert base != adapted, "the adapter should change the tokens"


@pytest.mark.slow
def test_genai_folder_with_a_dora_adapter_folded_in(tiny_bundle, tmp_path):
    """A DoRA adapter has no .onnx_adapter form: the folder gets it merged, and genai decodes as edgetune does."""
    bundle = tiny_bundle("llama", method="dora")
    write_random_adapter(bundle, tmp_path / "dora")
    export(bundle, tmp_path / "dora", "genai", tmp_path / "genai")
    assert open_bundle(tmp_path / "genai").manifest["adapter"]["folded"] is True
    assert not (tmp_path / "genai/adapters").exists()
    ours = Generator(bundle, adapter=tmp_path / "dora").generate_ids(PROMPT_IDS, NEW_TOKENS)
    assert genai_tokens(tmp_path / "genai", PROMPT_IDS)["base"] == ours


def test_fedex_base_deltas_are_folded_into_genai_and_refused_by_adapter_formats(tiny_bundle, tmp_path):
    """An adapter with FedEx-LoRA base deltas: genai gets it merged as `edgetune merge` does; LoRA files refuse it."""
    bundle = tiny_bundle("llama")
    manifest = read_manifest(bundle)
    weights = random_adapter(bundle, seed=7)
    rng = np.random.default_rng(3)
    deltas = {}
    for path in manifest["adapted_modules"]:
        key_a, key_b = lora_keys(path)
        deltas[delta_key(path)] = (
            rng.standard_normal((weights[key_b].shape[0], weights[key_a].shape[1])) * 0.05
        ).astype(np.float32)  # (out, in)
    sha = manifest["source"]["weights_sha256"]
    save_adapter(tmp_path / "fedex", weights, manifest["adapter_config"], sha, base_delta=deltas)
    for fmt, out in (("gguf", "x.gguf"), ("onnx-adapter", "x.onnx_adapter")):
        with pytest.raises(AdapterError, match="carries base-weight deltas"):
            export(bundle, tmp_path / "fedex", fmt, tmp_path / out)
    export(bundle, tmp_path / "fedex", "genai", tmp_path / "genai")
    assert open_bundle(tmp_path / "genai").manifest["adapter"]["folded"] is True
    merge(bundle, tmp_path / "fedex", tmp_path / "merged")
    ids = np.arange(3, 12, dtype=np.int64)[None]  # (1, 9)
    np.testing.assert_allclose(prefill_logits(tmp_path / "genai", ids), prefill_logits(tmp_path / "merged", ids))
    export(bundle, tmp_path / "fedex", "peft", tmp_path / "peft")
    assert (tmp_path / "peft" / "base_delta.safetensors").is_file()
