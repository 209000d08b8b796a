"""Adapters served unmerged: hot-swapped, removed, refused when foreign, and equal to merged."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from edgetune.common.errors import AdapterError
from edgetune.common.manifest import read_manifest
from edgetune.common.names import ADAPTER_CONFIG
from edgetune.common.peft import save_adapter
from edgetune.runtime.generate import Generator
from edgetune.runtime.merge import merge
from tests.parity import peft_model, random_adapter

PROMPT = [5, 17, 42, 8, 99, 23]
N = 32


def _save(bundle, folder, seed, base_sha=None):
    manifest = read_manifest(bundle)
    adapter = random_adapter(bundle, seed=seed, scale=0.3)
    save_adapter(folder, adapter, manifest["adapter_config"], base_sha or manifest["source"]["weights_sha256"])
    return adapter


def _greedy(model, n=N):
    with torch.no_grad():
        return model.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=n)[0, len(PROMPT) :].tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_swap_and_remove_match_peft_and_base(arch, tiny_bundle, tiny_model_dir, tmp_path):
    bundle = tiny_bundle(arch)
    manifest = read_manifest(bundle)
    first = _save(bundle, tmp_path / "a1", seed=11)
    second = _save(bundle, tmp_path / "a2", seed=12)
    g = Generator(bundle, adapter=tmp_path / "a1")
    assert g.generate_ids(PROMPT, N) == _greedy(peft_model(tiny_model_dir(arch), manifest, first))
    g.set_adapter(tmp_path / "a2")
    assert g.generate_ids(PROMPT, N) == _greedy(peft_model(tiny_model_dir(arch), manifest, second))
    g.set_adapter(None)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch)).eval()
    assert g.generate_ids(PROMPT, N) == _greedy(base)


def test_merged_model_generates_what_the_unmerged_adapter_does(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    _save(bundle, tmp_path / "a", seed=13)
    merge(bundle, tmp_path / "a", tmp_path / "merged")
    assert Generator(tmp_path / "merged").generate_ids(PROMPT, N) == Generator(
        bundle, adapter=tmp_path / "a"
    ).generate_ids(PROMPT, N)
    with pytest.raises(AdapterError, match="takes no adapter"):
        Generator(tmp_path / "merged").set_adapter(tmp_path / "a")


def test_foreign_or_broken_adapters_are_refused(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llama")
    g = Generator(bundle)
    _save(bundle, tmp_path / "foreign", seed=1, base_sha="0" * 64)
    with pytest.raises(AdapterError, match="different base model"):
        g.set_adapter(tmp_path / "foreign")
    _save(bundle, tmp_path / "noconfig", seed=1)
    (tmp_path / "noconfig" / ADAPTER_CONFIG).unlink()
    with pytest.raises(AdapterError, match=r"adapter_config\.json: missing"):
        g.set_adapter(tmp_path / "noconfig")
    _save(bundle, tmp_path / "badconfig", seed=1)
    (tmp_path / "badconfig" / ADAPTER_CONFIG).write_text('{"peft_type": "PREFIX_TUNING"}')
    with pytest.raises(AdapterError, match="peft_type"):
        g.set_adapter(tmp_path / "badconfig")
    other = tiny_bundle("qwen2")  # another base model entirely
    _save(other, tmp_path / "qwen", seed=1)
    with pytest.raises(AdapterError):
        g.set_adapter(tmp_path / "qwen")
