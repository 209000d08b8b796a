"""A build reads a safetensors or GGUF model a tensor at a time (`builder.streaming`), with the bytes of a full load."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from edgetune.builder.pipeline import build_bundle
from edgetune.builder.source import load_source
from edgetune.common.errors import EdgetuneError
from edgetune.options import BuildConfig
from tests.tiny_models import make_tokenizer

SAME_BYTES = ("base_weights.bin", "training_model.onnx", "eval_model.onnx", "inference.onnx", "checkpoint")


def _saved(tiny_model_dir, arch: str, folder, **save) -> str:
    """The tiny model in bf16 saved with save_pretrained(**save), with its tokenizer; returns the folder."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), dtype=torch.bfloat16)
    model.save_pretrained(folder, **save)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    "arch,options",
    [("llama", {"method": "qlora", "quant": "int4"}), ("phi3", {"method": "dora", "targets": "all-linear"})],
)
def test_sharded_bf16_safetensors_build_the_bytes_of_a_loaded_model(arch, options, tiny_model_dir, tmp_path):
    sharded = _saved(tiny_model_dir, arch, tmp_path / "sharded", max_shard_size="40KB")  # the hub's layout
    pickled = _saved(tiny_model_dir, arch, tmp_path / "pickled", safe_serialization=False)  # loaded whole
    assert len(json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    assert load_source(sharded).placeholders is not None and load_source(pickled).placeholders is None
    for name in ("sharded", "pickled"):
        build_bundle(BuildConfig(str(tmp_path / name), tmp_path / f"{name}-bundle", **options))
    for file in SAME_BYTES:
        assert (tmp_path / "sharded-bundle" / file).read_bytes() == (tmp_path / "pickled-bundle" / file).read_bytes()
    streamed, loaded = (
        json.loads((tmp_path / f"{n}-bundle" / "config.json").read_text()) for n in ("sharded", "pickled")
    )
    assert streamed == loaded


def test_a_shard_the_index_names_must_exist(tiny_model_dir, tmp_path):
    folder = _saved(tiny_model_dir, "llama", tmp_path / "m", max_shard_size="40KB")
    shard = sorted((tmp_path / "m").glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(EdgetuneError, match=f"names shards that are not in the folder \\({shard.name}\\)"):
        load_source(folder)


def test_a_tensor_of_the_wrong_shape_is_named(tiny_model_dir, tmp_path):
    folder = _saved(tiny_model_dir, "llama", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    with pytest.raises(EdgetuneError, match=r"mlp\.\w+_proj\.weight: the weights file holds a \(\d+, \d+\) tensor"):
        build_bundle(BuildConfig(folder, tmp_path / "b"))
