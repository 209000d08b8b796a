"""Adapters in PEFT's format: adapter_config.json + adapter_model.safetensors.

The graphs hold Aᵀ (in, r) and Bᵀ (r, out) under PEFT's key names (see
`edgetune.build.lora`); PEFT files hold A (r, in) and B (out, r). Moving between the
two is a transpose of every tensor, nothing else. DoRA adds a magnitude vector m (out,)
per layer, `<path>.lora_magnitude_vector`, the same in both layouts.
"""

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from edgetune.common.atomic import atomic_folder
from edgetune.common.adapter_config import check_supported
from edgetune.common.errors import AdapterError
from edgetune.common.manifest import read_json, write_json_atomic
from edgetune.common.names import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX

BASE_SHA_KEY = "edgetune.base_weights_sha256"  # safetensors metadata; PEFT ignores it
MAGNITUDE = "lora_magnitude_vector"


def adapter_keys(manifest: dict) -> list[str]:
    """PEFT keys of every adapter tensor of a bundle: A, B (and DoRA's m) per adapted module."""
    dora = manifest["adapter_config"].get("use_dora", False)
    keys = []
    for path in manifest["adapted_modules"]:
        keys += [f"{PEFT_PREFIX}{path}.lora_A.weight", f"{PEFT_PREFIX}{path}.lora_B.weight"]
        if dora:
            keys.append(f"{PEFT_PREFIX}{path}.{MAGNITUDE}")
    return keys


def to_graph_layout(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PEFT layout (A (r, in), B (out, r), m (out,)) -> graph layout (Aᵀ, Bᵀ, m), contiguous float32."""
    return {k: np.ascontiguousarray(v.T, dtype=np.float32) for k, v in weights.items()}


to_peft_layout = to_graph_layout  # a transpose is its own inverse


def save_adapter(folder: Path, weights: dict[str, np.ndarray], config: dict, base_sha256: str) -> None:
    """Write a PEFT adapter folder atomically (temp folder, fsync, rename). `weights` in PEFT layout."""
    folder = Path(folder)
    with atomic_folder(folder, "saving") as tmp:
        save_file(
            {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
            tmp / ADAPTER_WEIGHTS, metadata={"format": "pt", BASE_SHA_KEY: base_sha256},
        )
        with open(tmp / ADAPTER_WEIGHTS, "rb") as f:
            os.fsync(f.fileno())
        write_json_atomic(tmp / ADAPTER_CONFIG, config)


def read_adapter_config(folder: Path) -> dict:
    """Read an adapter folder's adapter_config.json and refuse what edgetune cannot express."""
    folder = Path(folder)
    config_path = folder / ADAPTER_CONFIG
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such adapter folder")
    config = read_json(config_path, AdapterError)
    check_supported(config, str(config_path))
    return config


def load_adapter(folder: Path, manifest: dict) -> tuple[dict[str, np.ndarray], dict]:
    """Read a PEFT adapter and check it fits the bundle; returns (weights in PEFT layout, config)."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    weights_path = folder / ADAPTER_WEIGHTS
    if not weights_path.is_file():
        raise AdapterError(f"{weights_path}: missing")
    weights = {_strip_adapter_name(k): v for k, v in load_file(weights_path).items()}
    _check_fits(weights, config, manifest, folder)
    return weights, config


def _strip_adapter_name(key: str) -> str:
    """PEFT saves `...lora_A.weight` and `...lora_magnitude_vector`; in-memory state dicts say
    `...lora_A.default.weight` and `...lora_magnitude_vector.default.weight`."""
    key = key.replace(".default.weight", ".weight")
    return key.replace(f".{MAGNITUDE}.weight", f".{MAGNITUDE}")


def _check_fits(weights: dict, config: dict, manifest: dict, folder: Path) -> None:
    from safetensors import safe_open

    with safe_open(folder / ADAPTER_WEIGHTS, "np") as f:
        base_sha = (f.metadata() or {}).get(BASE_SHA_KEY)
    if base_sha and base_sha != manifest["source"]["weights_sha256"]:
        raise AdapterError(f"{folder}: adapter was trained on a different base model (weights sha256 differs)")
    dora, ours = bool(config.get("use_dora")), bool(manifest["adapter_config"].get("use_dora"))
    if dora != ours:
        kinds = {True: "DoRA", False: "LoRA"}
        raise AdapterError(f"{folder}: a {kinds[dora]} adapter does not fit this {kinds[ours]} bundle")
    expected = set(adapter_keys(manifest))
    extra = sorted(set(weights) - expected)
    if extra:
        raise AdapterError(f"{folder}: adapter has tensors the bundle has no layer for, e.g. {extra[0]}")
    missing = sorted(expected - set(weights))
    if missing:
        raise AdapterError(f"{folder}: adapter lacks {missing[0]} (targets {config.get('target_modules')})")
    for key, value in weights.items():
        if key.endswith(MAGNITUDE):
            if value.ndim != 1:
                raise AdapterError(f"{folder}: {key} has shape {tuple(value.shape)}, not (out_features,)")
        elif value.ndim != 2 or value.shape[0 if ".lora_A." in key else 1] != config["r"]:
            raise AdapterError(f"{folder}: {key} has shape {tuple(value.shape)}, which does not fit r={config['r']}")
