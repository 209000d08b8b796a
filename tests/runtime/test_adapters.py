"""Adapter folders: PEFT's key names (saved and in-memory), DoRA magnitudes, and refused configs."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgetune.common.errors import AdapterError
from edgetune.common.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from edgetune.common.peft import bundle_adapter_keys, load_adapter, make_adapter_config, save_adapter

PATHS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def _manifest(dora: bool) -> dict:
    return {
        "adapted_modules": PATHS,
        "source": {"weights_sha256": "0" * 64},
        "adapter_config": make_adapter_config("m", ["q_proj"], 4, 8.0, 0.0, False, use_dora=dora),
    }


def _weights(dora: bool, in_memory: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    suffix = ".default.weight" if in_memory else ".weight"
    out = {}
    for path in PATHS:
        out[f"base_model.model.{path}.lora_A{suffix}"] = rng.standard_normal((4, 16)).astype(np.float32)
        out[f"base_model.model.{path}.lora_B{suffix}"] = rng.standard_normal((16, 4)).astype(np.float32)
        if dora:
            key = f"base_model.model.{path}.lora_magnitude_vector"
            out[key + (".default.weight" if in_memory else "")] = rng.random(16).astype(np.float32)
    return out


def _write(folder, weights, config):
    folder.mkdir()
    save_file(weights, folder / ADAPTER_WEIGHTS)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))
    return folder


def test_dora_keys_include_the_magnitude_vector():
    keys = bundle_adapter_keys(_manifest(dora=True))
    assert len(keys) == 3 * len(PATHS)
    assert f"base_model.model.{PATHS[0]}.lora_magnitude_vector" in keys
    assert not any("magnitude" in k for k in bundle_adapter_keys(_manifest(dora=False)))


@pytest.mark.parametrize("in_memory", [False, True])
def test_dora_adapter_round_trips_with_peft_names(in_memory, tmp_path):
    manifest = _manifest(dora=True)
    folder = _write(tmp_path / "a", _weights(True, in_memory), manifest["adapter_config"])
    weights, config = load_adapter(folder, manifest)
    assert sorted(weights) == sorted(bundle_adapter_keys(manifest)) and config["use_dora"]
    save_adapter(tmp_path / "b", weights, config, "0" * 64)
    again, _ = load_adapter(tmp_path / "b", manifest)
    for key, value in weights.items():
        np.testing.assert_array_equal(again[key], value)


def test_lora_and_dora_do_not_mix(tmp_path):
    dora = _write(tmp_path / "dora", _weights(True), _manifest(True)["adapter_config"])
    with pytest.raises(AdapterError, match="a DoRA adapter does not fit this LoRA bundle"):
        load_adapter(dora, _manifest(dora=False))


def test_magnitude_must_be_a_vector(tmp_path):
    weights = _weights(True)
    key = f"base_model.model.{PATHS[0]}.lora_magnitude_vector"
    weights[key] = weights[key][None]
    folder = _write(tmp_path / "a", weights, _manifest(True)["adapter_config"])
    with pytest.raises(AdapterError, match="not \\(out_features,\\)"):
        load_adapter(folder, _manifest(True))


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("peft_type", "LOHA", "peft_type 'LOHA' is not supported"),
        ("r", 0, "r=0 is not a positive integer"),
        ("target_modules", None, "target_modules is missing"),
        ("bias", "all", "bias='all' is not supported"),
        ("init_lora_weights", "olora", "changes the base weights"),
        ("rank_pattern", {"q_proj": 8}, "rank_pattern={'q_proj': 8} is not supported"),
        ("exclude_modules", ["k_proj"], "exclude_modules=['k_proj'] is not supported"),
        ("use_qalora", True, "use_qalora=True is not supported"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_field(field, value, message, tmp_path):
    config = {**_manifest(False)["adapter_config"], field: value}
    folder = _write(tmp_path / "a", _weights(False), config)
    with pytest.raises(AdapterError) as err:
        load_adapter(folder, _manifest(False))
    assert message in str(err.value) and "\n" not in str(err.value)
